"""DARTS architecture search (Liu, Simonyan, Yang, ICLR 2019), first or second order.

    # the paper's CIFAR-10 search, second order (exact Hessian-vector product)
    python experiments/darts.py --second_order --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/darts.py --dataset digits --second_order --layers 3 --init_channels 8 \
        --epochs 5 --batch_size 32 --save runs/digits

Flags and defaults are the official code's (train_search.py). Rerunning with the same --save
resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from jnas.errors import JnasError
from jnas.genotype import PRIMITIVES
from jnas.runner import run_search
from jnas.search import SearchConfig


def parse_args(argv=None) -> tuple[SearchConfig, bool]:
    d = SearchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    p.add_argument(
        "--second_order", "--unrolled", action="store_true", help="unrolled bilevel step"
    )
    p.add_argument("--hessian", choices=("exact", "finite_difference"), default=d.hessian)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save", default=d.save, help="output folder; rerun to resume")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    fields = {k: v for k, v in vars(a).items() if k not in ("ops", "no_progress")}
    return SearchConfig(**fields, primitives=tuple(a.ops.split(","))), not a.no_progress


def main(argv=None) -> int:
    try:
        config, progress = parse_args(argv)
        run_search(config, progress=progress)
    except JnasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
