r"""DARTS architecture search (Liu, Simonyan, Yang, ICLR 2019), first or second order.

    # the paper's CIFAR-10 search, second order (exact Hessian-vector product)
    python experiments/darts.py --second_order --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space, with the benchmark's settings (50 epochs)
    python experiments/darts.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/darts.py --dataset digits --second_order --layers 3 --init_channels 8 \
        --epochs 5 --batch_size 32 --save runs/digits

Flags and defaults are the official code's (train_search.py). Rerunning with the same --save
resumes from the last checkpoint.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("darts", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
