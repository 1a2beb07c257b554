"""Command-line plumbing shared by the scripts in experiments/.

Every script has the same flags, outputs, progress bars and resume behaviour; a script adds
only its algorithm's flags and fixes `algorithm`.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from jnas.episodes import FEWSHOT_DATASETS
from jnas.errors import JnasError
from jnas.genotype import PRIMITIVES
from jnas.meta import ALGORITHMS as META_ALGORITHMS
from jnas.meta import MetaConfig
from jnas.meta_runner import run_meta
from jnas.runner import run_search
from jnas.search import SearchConfig
from jnas.sharding import initialize_distributed

DEFAULT_COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jnas", "xla")

# Flags that are not SearchConfig (MetaConfig) fields.
_SCRIPT_FLAGS = (
    "ops",
    "no_progress",
    "compile_cache",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
)


def search_parser(doc: str, defaults: SearchConfig) -> argparse.ArgumentParser:
    """The flags every search script has, with the official DARTS names."""
    d = defaults
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default=d.dataset, help="digits, cifar10, cifar100 or a .npz path")
    p.add_argument("--data_dir", default=d.data_dir, help="TFDS data_dir or folder of .npz files")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--learning_rate_min", type=float, default=d.learning_rate_min)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight_decay", type=float, default=d.weight_decay)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--init_channels", type=int, default=d.init_channels)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--nodes", type=int, default=d.nodes, help="intermediate nodes per cell")
    p.add_argument(
        "--ops", default=",".join(PRIMITIVES), help="comma-separated candidate operations"
    )
    p.add_argument("--train_portion", type=float, default=d.train_portion)
    p.add_argument("--arch_learning_rate", type=float, default=d.arch_learning_rate)
    p.add_argument("--arch_weight_decay", type=float, default=d.arch_weight_decay)
    p.add_argument("--grad_clip", type=float, default=d.grad_clip)
    add_run_flags(p, d, "each batch")
    return p


def add_run_flags(p: argparse.ArgumentParser, d, split: str) -> None:
    """Seed, output folder, progress bar, devices and hosts: every script's (`d`: the config
    with the defaults; `split`: what is split over the devices, for the help)."""
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save", default=d.save, help="output folder; rerun to resume")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compile_cache",
        default=os.environ.get("JNAS_COMPILE_CACHE", DEFAULT_COMPILE_CACHE),
        help="folder of JAX's persistent compilation cache, so that a resumed or repeated run "
        "does not compile its steps again; 'none' turns it off, as do multi-process CPU runs "
        "(default: $JNAS_COMPILE_CACHE or %(default)s)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=d.devices,
        help=f"devices per process to split {split} over (default: all local devices)",
    )
    add_host_flags(p)


def add_host_flags(p: argparse.ArgumentParser) -> None:
    """jax.distributed's settings, for runs over several processes (hosts)."""
    hosts = p.add_argument_group(
        "several hosts",
        "jax.distributed.initialize() runs with --distributed or when a coordinator is given "
        "(flag or JAX_COORDINATOR_ADDRESS); unset values come from JAX_NUM_PROCESSES, "
        "JAX_PROCESS_ID or the cluster (SLURM, Open MPI, Cloud TPU).",
    )
    hosts.add_argument("--distributed", action="store_true", help="join a multi-process run")
    hosts.add_argument("--coordinator_address", help="host:port of process 0")
    hosts.add_argument("--num_processes", type=int)
    hosts.add_argument("--process_id", type=int)


def add_gumbel_flags(p: argparse.ArgumentParser, defaults: SearchConfig) -> None:
    """GDAS's temperature schedule and fixed reduction cell."""
    p.add_argument("--tau_max", type=float, default=defaults.tau_max, help="first-epoch tau")
    p.add_argument("--tau_min", type=float, default=defaults.tau_min, help="last-epoch tau")
    p.add_argument(
        "--fix_reduction",
        action="store_true",
        help="GDAS's fixed reduction cell (FRC): search the normal cell only",
    )


def main(parser: argparse.ArgumentParser, argv=None, **fixed) -> int:
    """Parse, build the config (`fixed` fields override flags), search; 2 on a JnasError."""

    def run(args):
        fields = {k: v for k, v in args.items() if k not in _SCRIPT_FLAGS}
        config = SearchConfig(**fields, **fixed, primitives=tuple(args["ops"].split(",")))
        run_search(config, progress=not args["no_progress"])

    return _run(parser, argv, run)


def meta_parser(doc: str, defaults: MetaConfig) -> argparse.ArgumentParser:
    """The flags of experiments/tnas.py: every MetaConfig field, the defaults the papers'."""
    d = defaults
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--algo", default=d.algo, choices=META_ALGORITHMS)
    p.add_argument("--dataset", default=d.dataset, choices=FEWSHOT_DATASETS)
    p.add_argument("--data_dir", default=d.data_dir, help="folder of the data (see README)")
    for name in ("way", "shot", "query", "meta_batch", "inner_steps", "inner_steps_test"):
        p.add_argument(f"--{name}", type=int, default=getattr(d, name))
    for name in ("inner_lr_w", "inner_lr_alpha", "meta_lr_w", "meta_lr_alpha"):
        p.add_argument(f"--{name}", type=float, default=getattr(d, name))
    p.add_argument("--iterations", type=int, default=d.iterations, help="meta-iterations")
    p.add_argument(
        "--first_order", action="store_true", help="first-order MAML (no second derivatives)"
    )
    p.add_argument("--test_episodes", type=int, default=d.test_episodes)
    p.add_argument("--filters", type=int, default=d.filters, help="MAML's conv learner width")
    p.add_argument("--init_channels", type=int, default=d.init_channels, help="T-NAS's C")
    p.add_argument("--layers", type=int, default=d.layers, help="cells, normal and reduction")
    p.add_argument("--nodes", type=int, default=d.nodes, help="intermediate nodes per cell")
    p.add_argument(
        "--ops", default=",".join(d.primitives), help="comma-separated candidate operations"
    )
    p.add_argument("--log_every", type=int, default=d.log_every, help="meta-iterations")
    p.add_argument("--checkpoint_every", type=int, default=d.checkpoint_every)
    add_run_flags(p, d, "the tasks")
    return p


def meta_main(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, build the MetaConfig, meta-train and test; 2 on a JnasError."""

    def run(args):
        fields = {k: v for k, v in args.items() if k not in _SCRIPT_FLAGS}
        config = MetaConfig(**fields, primitives=tuple(args["ops"].split(",")))
        run_meta(config, progress=not args["no_progress"])

    return _run(parser, argv, run)


def avoid_gpu_compiler_abort() -> None:
    """Turn off XLA's Triton GEMM fusion on GPU unless XLA_FLAGS already sets it: with jax
    0.11.2 on an H100, compiling a search step aborted the process in that pass (a failed
    check in triton_tiling_propagation.cc); with the flag it compiled and ran. Effective only
    before JAX first touches a device, so the scripts call it first."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_enable_triton_gemm" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_triton_gemm=false".strip()


def _run(parser: argparse.ArgumentParser, argv, run) -> int:
    avoid_gpu_compiler_abort()
    try:
        args = vars(parser.parse_args(argv))
        if args["compile_cache"] != "none":
            jax.config.update("jax_compilation_cache_dir", args["compile_cache"])
        coordinator = args["coordinator_address"] or os.environ.get("JAX_COORDINATOR_ADDRESS")
        if args["distributed"] or coordinator:
            initialize_distributed(
                args["coordinator_address"], args["num_processes"], args["process_id"]
            )
        run(args)
    except JnasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
