r"""FairDARTS architecture search (Chu, Zhou, Zhang & Li, ECCV 2020): sigmoid op weights.

    # the paper's CIFAR-10 search (batch 128, 50 epochs, w01 10, threshold 0.85)
    python experiments/fairdarts.py --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space, with the benchmark's DARTS settings
    python experiments/fairdarts.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/fairdarts.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --batch_size 32 --arch_learning_rate 0.1 --save runs/fairdarts_digits

Every op of an edge is weighted by sigmoid(alpha) on its own, so ops do not compete through a
softmax, and the architecture step adds --w01 times the zero-one loss
-mean((sigmoid(alpha) - 0.5)^2), which drives every weight towards 0 or 1. The derived cell
keeps per node the 2 strongest edges whose op weight reaches --op_threshold, so a node may
keep 1 edge or none (on NAS-Bench-201: every edge whose argmax op reaches it). Early in a
search no weight does yet and the derived cells are empty, hence the digits run's larger
architecture learning rate. The candidate ops are DARTS's without 'none'. The outputs and
resume behaviour are those of darts.py.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("fairdarts", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
