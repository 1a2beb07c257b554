r"""ENAS (Pham et al., ICML 2018): an LSTM controller trained by REINFORCE on the validation
accuracy of the children it samples, the children sharing the supernet's weights.

    # ENAS's CIFAR-10 settings (150 epochs, batch 160) on DARTS's space
    python experiments/enas.py --data_dir ~/tensorflow_datasets
    # on NAS-Bench-201's space with the benchmark's ENAS settings (250 epochs), the greedy
    # and the derived cells looked up in the benchmark
    python experiments/enas.py --space nas-bench-201 --data_dir ~/tensorflow_datasets \
        --benchmark ~/NATS-tss-v1_0-3ffb9-simple
    # a few minutes on a laptop CPU, no download
    python experiments/enas.py --dataset digits --layers 3 --init_channels 8 --epochs 5 \
        --batch_size 32 --train_portion 0.5 --controller_train_steps 10 --save runs/enas_digits

Each epoch trains the shared weights on one sampled child per step, then the controller
(--controller_train_steps updates of --controller_num_aggregate children, each scored on its
own validation batch). At the end --derive_samples children are sampled and scored; the best
is the result. Outputs in --save: metrics.jsonl (per epoch: train loss and accuracy, the
controller's mean reward, entropy and loss, the baseline, its greedy architecture),
curves.png, controller.png, config.json and checkpoints (rerun the same command to resume);
at the end genotype.json and genotype.png (the derived architecture), selection.json (the
sampled children and their scores) and result.json.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.enas_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
