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

import sys

from jnas import cli
from jnas.search import SearchConfig


def parser():
    d = SearchConfig(algorithm="darts")
    p = cli.search_parser(__doc__, d)
    p.add_argument(
        "--second_order", "--unrolled", action="store_true", help="unrolled bilevel step"
    )
    p.add_argument("--hessian", choices=("exact", "finite_difference"), default=d.hessian)
    return p


def main(argv=None) -> int:
    return cli.main(parser(), argv, algorithm="darts")


if __name__ == "__main__":
    sys.exit(main())
