r"""PC-DARTS architecture search (Xu et al., ICLR 2020): partial channel connections.

    # the paper's CIFAR-10 search (K=4, batch 256, 50 epochs, architecture steps from epoch 15)
    python experiments/pcdarts.py --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space, with the benchmark's DARTS settings
    python experiments/pcdarts.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/pcdarts.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --warmup_epochs 2 --batch_size 32 --save runs/pcdarts_digits

1/--partial_channels of each edge's channels go through its ops, the rest bypass it and the
channels are shuffled; a softmax of one beta per edge over each node's inputs weights the
edges (edge normalisation), and edges are kept by op weight times that normalised beta. The
architecture steps (DARTS's first order) start after --warmup_epochs epochs of weight steps.
alphas.npz holds the betas too (beta_normal, beta_reduce; beta_cell on NAS-Bench-201). The
outputs and resume behaviour are those of darts.py.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("pcdarts", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
