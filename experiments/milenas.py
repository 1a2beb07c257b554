"""MiLeNAS architecture search (He et al., CVPR 2020): mixed-level optimisation.

    # the paper's CIFAR-10 search
    python experiments/milenas.py --data_dir ~/tensorflow_datasets
    # MiLeNAS's update with GDAS's single-path Gumbel relaxation (MiLeNAS+GDAS)
    python experiments/milenas.py --gdas --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/milenas.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --batch_size 32 --save runs/milenas_digits

alpha follows grad_alpha (L_train + lambda * L_val) at the current weights. The other flags
and defaults are DARTS's, the outputs and resume behaviour those of darts.py.
"""

from __future__ import annotations

import dataclasses
import sys

from jnas import cli
from jnas.search import SearchConfig

DEFAULTS = dataclasses.replace(SearchConfig(algorithm="milenas"), save="runs/milenas")


def parser():
    p = cli.search_parser(__doc__, DEFAULTS)
    p.add_argument(
        "--lambda", "--lam", dest="lam", type=float, default=DEFAULTS.lam,
        help="weight of the validation loss in the architecture gradient",
    )
    p.add_argument(
        "--gdas", dest="gumbel", action="store_true",
        help="GDAS's single-path Gumbel relaxation (MiLeNAS+GDAS)",
    )
    cli.add_gumbel_flags(p, DEFAULTS)
    return p


def main(argv=None) -> int:
    return cli.main(parser(), argv, algorithm="milenas")


if __name__ == "__main__":
    sys.exit(main())
