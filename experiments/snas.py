r"""SNAS architecture search (Xie, Zheng, Liu & Lin, ICLR 2019): stochastic NAS.

    # the paper's CIFAR-10 search (150 epochs, temperature 1 -> 0.03)
    python experiments/snas.py --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space
    python experiments/snas.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/snas.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --batch_size 32 --save runs/snas_digits

Every edge mixes its ops with a soft Gumbel-softmax sample of alpha, and one loss on each
training batch updates the weights and alpha together (single-level). The outputs and
resume behaviour are those of darts.py.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("snas", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
