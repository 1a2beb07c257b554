r"""Random search with weight sharing (RSPS; Li & Talwalkar, UAI 2019): the supernet trained on
one uniformly drawn architecture per step, then random architectures scored with the shared
weights.

    # on NAS-Bench-201's space, as the benchmark ran it (250 epochs, 100 candidates of 512
    # validation images each), each epoch's choice looked up in the benchmark
    python experiments/rsps.py --space nas-bench-201 --epochs 250 \
        --data_dir ~/tensorflow_datasets --benchmark ~/NATS-tss-v1_0-3ffb9-simple
    # on DARTS's CIFAR-10 space (100 epochs, randomNAS_release's default)
    python experiments/rsps.py --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/rsps.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --batch_size 32 --candidate_batch_size 256 --save runs/rsps_digits

After every epoch --candidates architectures are drawn uniformly and each is scored on its
own batch of --candidate_batch_size validation images (the half of the training set that
trains no weights), BatchNorm on the batch's statistics; the best is the epoch's
architecture. Outputs in --save: genotype.json and genotype.png (the last epoch's choice),
selection.json (its candidates and their scores), metrics.jsonl (per epoch: train loss and
accuracy, the choice's score select_acc, the candidates' mean candidates_acc, the genotype),
config.json and checkpoints; rerun the same command to resume. The other flags are the
weight training's (DARTS's settings; NAS-Bench-201's with --space nas-bench-201).
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.search_main("rsps", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
