r"""GDAS architecture search (Dong & Yang, CVPR 2019): one sampled op per edge per step.

    # the paper's CIFAR-10 search (240 epochs), with the fixed reduction cell
    python experiments/gdas.py --fix_reduction --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space, with the benchmark's settings (250 epochs)
    python experiments/gdas.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/gdas.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --batch_size 32 --save runs/gdas_digits

Gumbel-max sampling with the straight-through gradient of the Gumbel softmax; the temperature
falls linearly from --tau_max to --tau_min over the epochs. The other flags and defaults are
DARTS's (the paper's settings), the outputs and resume behaviour those of darts.py.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("gdas", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
