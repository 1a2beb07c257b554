r"""RobustDARTS (Zela et al., ICLR 2020): DARTS-ES and R-DARTS(L2).

    # DARTS-ES: second-order DARTS on CIFAR-10, the Hessian's dominant eigenvalue in alpha
    # after every epoch, stopped once its local average grew by 1/0.75 over 5 epochs
    python experiments/rdarts.py --data_dir ~/tensorflow_datasets
    # R-DARTS(L2): one search per weight decay (the paper's factors), the best kept by the
    # validation accuracy of its search network
    python experiments/rdarts.py --l2_factors 3e-4,9e-4,27e-4,81e-4 --no-early_stop \
        --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space
    python experiments/rdarts.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/rdarts.py --dataset digits --layers 3 --init_channels 8 --epochs 8 \
        --es_start_epoch 1 --es_lag 2 --es_window 3 --batch_size 32 --save runs/rdarts_digits

The outputs and resume behaviour are those of darts.py, plus hessian.png; when DARTS-ES
stops, genotype.json is the architecture of the epoch it keeps. With --l2_factors each search
writes into <save>/l2_<factor> and <save>/l2_sweep.json names the best.
"""

from __future__ import annotations

import argparse
import sys

from jnas import cli
from jnas.robust import l2_sweep
from jnas.runner import run_search


def _factors(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(f) for f in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers, e.g. 3e-4,9e-4,27e-4,81e-4"
        ) from None


def l2_flag(parser):
    parser.add_argument(
        "--l2_factors", type=_factors, default=None, metavar="DECAYS",
        help="R-DARTS(L2): one search per weight decay (the paper's: 3e-4,9e-4,27e-4,81e-4)",
    )


def run(config, progress=True, l2_factors=None):
    if l2_factors is None:
        return run_search(config, progress=progress)
    return l2_sweep(config, l2_factors, run_search, progress=progress)


def main(argv=None) -> int:
    return cli.search_main("rdarts", __doc__, argv, extra=l2_flag, run=run)


if __name__ == "__main__":
    sys.exit(main())
