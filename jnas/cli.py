"""Command-line plumbing shared by the scripts in experiments/.

Every script has the same flags, outputs, progress bars and resume behaviour; a script adds
only its algorithm's flags and fixes `algorithm`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

import jax

from jnas.algorithms import ALGORITHMS, algorithm
from jnas.episodes import FEWSHOT_DATASETS
from jnas.errors import JnasError
from jnas.meta import ALGORITHMS as META_ALGORITHMS
from jnas.meta import MetaConfig
from jnas.meta_runner import run_meta
from jnas.relax import RELAXATIONS
from jnas.runner import run_search
from jnas.search import SearchConfig
from jnas.sharding import initialize_distributed
from jnas.spaces import SPACES

DEFAULT_COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jnas", "xla")

# Flags that are not SearchConfig (MetaConfig) fields.
_SCRIPT_FLAGS = (
    "no_progress",
    "compile_cache",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
)
# A field's flag is --<field>, except these; and these fields take more names.
_FLAG_NAMES = {"primitives": "ops"}
_ALIASES = {"second_order": ("--unrolled",), "lam": ("--lambda",)}
# Fields whose default may be None: the type of their values.
_NONE_TYPES = {"data_dir": str, "relaxation": str, "tau_max": float, "tau_min": float,
               "devices": int, "benchmark": str,
               "primitives": lambda text: tuple(text.split(","))}
_HELP = {
    "space": f"search space: {', '.join(SPACES)}",
    "relaxation": f"relaxation of alpha: {', '.join(RELAXATIONS)} (default: the algorithm's)",
    "dataset": "digits, cifar10, cifar100 or a .npz path",
    "data_dir": "TFDS data_dir or folder of .npz files",
    "primitives": "comma-separated candidate operations (default: the space's)",
    "nodes": "intermediate nodes per cell (DARTS space)",
    "layers": "cells (DARTS space)",
    "cells_per_stage": "cells per stage, N (NAS-Bench-201 space)",
    "fix_reduction": "GDAS's fixed reduction cell (FRC): search the normal cell only",
    "second_order": "DARTS's unrolled bilevel step",
    "lam": "MiLeNAS's weight of the validation loss in the architecture gradient",
    "tau_max": "first-epoch temperature (default: the relaxation's)",
    "tau_min": "last-epoch temperature (default: the relaxation's)",
    "nesterov": "Nesterov momentum for the weights",
    "benchmark": "NAS-Bench-201: a NATS-Bench file or folder (pip install \"jnas[nats]\"), or a "
    "CSV with an arch column; every epoch's derived cell is looked up in it",
}
_RUN_FIELDS = ("seed", "save", "devices")  # add_run_flags


class _Formatter(argparse.RawTextHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and every flag's default in its help."""


def flag(field: str) -> str:
    return "--" + _FLAG_NAMES.get(field, field)


def search_parser(doc: str, defaults: SearchConfig) -> argparse.ArgumentParser:
    """A flag for every SearchConfig field the algorithm reads (named as the official code
    names it), with `defaults` (`SearchConfig.published`) as the defaults."""
    algo = algorithm(defaults.algorithm)
    options = {o for a in ALGORITHMS.values() for o in a.options}
    p = argparse.ArgumentParser(description=doc, formatter_class=_Formatter)
    for f in dataclasses.fields(SearchConfig):
        name = f.name
        if name == "algorithm" or name in _RUN_FIELDS or (name in options
                                                          and name not in algo.options):
            continue
        default = getattr(defaults, name)
        kwargs = {"default": default, "dest": name, "help": _HELP.get(name)}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "hessian":
            kwargs["choices"] = ("exact", "finite_difference")
        else:
            kwargs["type"] = _NONE_TYPES.get(name, type(default))
            if name == "primitives":
                kwargs["metavar"] = "OPS"
        p.add_argument(flag(name), *_ALIASES.get(name, ()), **kwargs)
    add_run_flags(p, defaults, "each batch")
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


def search_main(algorithm_name: str, doc: str, argv=None, extra=None) -> int:
    """The search scripts' main: `--space` (and the algorithm) choose the defaults, the
    other flags override them; 2 on a JnasError. `extra(parser)` adds script-only flags."""

    def run(argv):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--space", default="darts")
        space = pre.parse_known_args(argv)[0].space
        defaults = SearchConfig.published(algorithm_name, space, save=f"runs/{algorithm_name}")
        parser = search_parser(doc, defaults)
        if extra is not None:
            extra(parser)
        args = _parse(parser, argv)
        fields = {k: v for k, v in args.items() if k not in _SCRIPT_FLAGS}
        config = SearchConfig(algorithm=algorithm_name, **fields)
        run_search(config, progress=not args["no_progress"])

    return _run(run, argv, SearchConfig)


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

    def run(argv):
        args = _parse(parser, argv)
        fields = {k: v for k, v in args.items() if k not in _SCRIPT_FLAGS}
        primitives = tuple(fields.pop("ops").split(","))
        config = MetaConfig(**fields, primitives=primitives)
        run_meta(config, progress=not args["no_progress"])

    return _run(run, argv, MetaConfig)


def avoid_gpu_compiler_abort() -> None:
    """Turn off XLA's Triton GEMM fusion on GPU unless XLA_FLAGS already sets it: with jax
    0.11.2 on an H100, compiling a search step aborted the process in that pass (a failed
    check in triton_tiling_propagation.cc); with the flag it compiled and ran. Effective only
    before JAX first touches a device, so the scripts call it first."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_enable_triton_gemm" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_triton_gemm=false".strip()


def _parse(parser: argparse.ArgumentParser, argv) -> dict:
    args = vars(parser.parse_args(argv))
    if args["compile_cache"] != "none":
        jax.config.update("jax_compilation_cache_dir", args["compile_cache"])
    coordinator = args["coordinator_address"] or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if args["distributed"] or coordinator:
        initialize_distributed(args["coordinator_address"], args["num_processes"],
                               args["process_id"])
    return args


def as_flags(message: str, config_class) -> str:
    """A library message with its `field` names written as the command line's --flags."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    return re.sub(r"`(\w+)`", lambda m: flag(m[1]) if m[1] in fields else m[0], message)


def _run(run, argv, config_class) -> int:
    avoid_gpu_compiler_abort()
    try:
        run(argv)
    except JnasError as e:
        print(f"error: {as_flags(str(e), config_class)}", file=sys.stderr)
        return 2
    return 0
