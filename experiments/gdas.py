"""GDAS architecture search (Dong & Yang, CVPR 2019): one sampled op per edge per step.

    # the paper's CIFAR-10 search (240 epochs), with the fixed reduction cell
    python experiments/gdas.py --fix_reduction --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/gdas.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --batch_size 32 --save runs/gdas_digits

Gumbel-max sampling with the straight-through gradient of the Gumbel softmax; the temperature
falls linearly from --tau_max to --tau_min over the epochs. The other flags and defaults are
DARTS's (the paper's settings), the outputs and resume behaviour those of darts.py.
"""

from __future__ import annotations

import dataclasses
import sys

from jnas import cli
from jnas.search import SearchConfig

DEFAULTS = dataclasses.replace(SearchConfig(algorithm="gdas"), epochs=240, save="runs/gdas")


def parser():
    p = cli.search_parser(__doc__, DEFAULTS)
    cli.add_gumbel_flags(p, DEFAULTS)
    return p


def main(argv=None) -> int:
    return cli.main(parser(), argv, algorithm="gdas")


if __name__ == "__main__":
    sys.exit(main())
