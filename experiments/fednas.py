r"""FedNAS (He, Annavaram & Avestimehr, 2020): architecture search across clients that never
share their data, and FedAvg training of a fixed architecture (its second stage and
baseline). All clients are one array axis: a round is one vmapped program per local epoch.

    # the paper's search: CIFAR-10, 16 clients, Dirichlet 0.5 label skew, 50 rounds of 5
    # local MiLeNAS epochs, batch 64
    python experiments/fednas.py --data_dir ~/tensorflow_datasets
    # FedAvg training of the searched cell (the evaluation network, C=16, 8 cells)
    python experiments/fednas.py --stage train --arch runs/fednas/genotype.json \
        --data_dir ~/tensorflow_datasets
    # a few minutes on a laptop CPU, no download
    python experiments/fednas.py --dataset digits --clients 4 --rounds 5 --local_epochs 1 \
        --layers 3 --init_channels 8 --batch_size 16 --save runs/fednas_digits

Every client starts a round from the server's weights, BatchNorm statistics and alpha, with
fresh optimizer states; the server averages them by the clients' sample counts. Rerunning
with the same --save resumes from the last round.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.fednas_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
