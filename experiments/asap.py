r"""ASAP architecture search (Noy et al., AISTATS 2020): anneal and prune.

    # CIFAR-10 (50 epochs; alpha trained from epoch 10, once the temperature is under 1)
    python experiments/asap.py --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space
    python experiments/asap.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/asap.py --dataset digits --layers 3 --init_channels 8 --epochs 12 \
        --warmup_epochs 2 --batch_size 32 --save runs/asap_digits

Every edge mixes its ops with softmax(alpha / T), T annealed exponentially from --tau_max to
--tau_min; an op whose weight falls under --prune_threshold / ops is pruned for good and no
longer computed. The outputs and resume behaviour are those of darts.py; alphas.npz also
holds the unpruned ops (alive_<cell type>), and alphas.png shows pruned ops at weight 0.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("asap", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
