"""Command-line plumbing shared by the search scripts in experiments/.

Every script has the same flags, outputs, progress bars and resume behaviour; a script adds
only its algorithm's flags and fixes `algorithm`.
"""

from __future__ import annotations

import argparse
import os
import sys

from jnas.errors import JnasError
from jnas.genotype import PRIMITIVES
from jnas.runner import run_search
from jnas.search import SearchConfig
from jnas.sharding import initialize_distributed

# Flags that are not SearchConfig fields.
_SCRIPT_FLAGS = (
    "ops",
    "no_progress",
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
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save", default=d.save, help="output folder; rerun to resume")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--devices",
        type=int,
        default=d.devices,
        help="devices per process to split each batch over (default: all local devices)",
    )
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
    return p


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
    """Parse, build the config (`fixed` fields override flags), run; 2 on a JnasError."""
    try:
        args = vars(parser.parse_args(argv))
        fields = {k: v for k, v in args.items() if k not in _SCRIPT_FLAGS}
        config = SearchConfig(**fields, **fixed, primitives=tuple(args["ops"].split(",")))
        coordinator = args["coordinator_address"] or os.environ.get("JAX_COORDINATOR_ADDRESS")
        if args["distributed"] or coordinator:
            initialize_distributed(
                args["coordinator_address"], args["num_processes"], args["process_id"]
            )
        run_search(config, progress=not args["no_progress"])
    except JnasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
