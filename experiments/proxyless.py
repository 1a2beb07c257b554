r"""ProxylessNAS architecture search (Cai, Zhu & Han, ICLR 2019): binary gates, no latency loss.

    # CIFAR-10 on the DARTS space (50 epochs, the first 12 weight steps alone)
    python experiments/proxyless.py --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space, with the benchmark's weight settings
    python experiments/proxyless.py --space nas-bench-201 --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/proxyless.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --warmup_epochs 1 --batch_size 32 --save runs/proxyless_digits

Each weight step trains one op per edge, sampled from softmax(alpha); each architecture step
samples two ops per edge, runs both with binary gates (in value the active op alone) and
updates alpha by the BinaryConnect-style gradient of the gates, then rescales the two alphas
so that the other ops keep their probabilities. Memory is that of one or two paths per edge,
not of every op. Alpha's Adam is the official one (lr 1e-3, beta1 0, no weight decay); the
weights' settings are DARTS's. The outputs and resume behaviour are those of darts.py.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("proxyless", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
