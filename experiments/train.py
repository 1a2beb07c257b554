r"""Train a searched architecture from scratch by a published protocol, ending in its test
error: DARTS's evaluation (Liu et al., ICLR 2019, cnn/train.py) or NAS-Bench-201's (Dong &
Yang, ICLR 2020).

    # DARTS_V2 by DARTS's protocol: C=36, 20 cells, 600 epochs, cutout, drop path, aux head
    python experiments/train.py --arch DARTS_V2 --data_dir ~/tensorflow_datasets
    # the architecture a search wrote
    python experiments/train.py --arch runs/darts/genotype.json --data_dir DATA
    # a NAS-Bench-201 cell by the benchmark's protocol (200 epochs, batch 256, lr 0.1)
    python experiments/train.py --protocol nas-bench-201 --data_dir DATA \
        --arch '|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|'
    # a few minutes on a laptop CPU, no download
    python experiments/train.py --dataset digits --init_channels 8 --layers 5 --epochs 5 \
        --batch_size 32 --save runs/train_digits

Rerunning with the same --save resumes from the last checkpoint.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.train_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
