r"""MiLeNAS architecture search (He et al., CVPR 2020): mixed-level optimisation.

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

import sys

from jnas import cli


def gdas_flag(parser):
    parser.add_argument(
        "--gdas", dest="relaxation", action="store_const", const="gdas",
        help="GDAS's single-path Gumbel relaxation (MiLeNAS+GDAS): --relaxation gdas",
    )


def main(argv=None) -> int:
    return cli.search_main("milenas", __doc__, argv, extra=gdas_flag)


if __name__ == "__main__":
    sys.exit(main())
