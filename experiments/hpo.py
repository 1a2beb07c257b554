r"""Multi-fidelity search of NAS-Bench-201 cells on Optuna: random search, HyperBand, or a
BOHB-like TPE + HyperBand, each trial's cell trained by the evaluation trainer and scored by
the feature-history estimator (Cao, CMU-RI-TR-21-09, 2021) or its last epoch's validation
accuracy at every budget. Needs `pip install "jnas[hpo]"`.

    # the thesis's setting: CIFAR-10 subset 8k/2k, budgets 1-128 epochs, eta 2 (GPU-scale)
    python experiments/hpo.py --algo hyperband --estimator feature_history --data_dir DATA \
        --min_budget 1 --max_budget 128 --eta 2 --save runs/hpo_hb_fh
    # the same with the regret against NAS-Bench-201 (a CSV with an arch column, or the
    # NATS-Bench topology file: pip install "jnas[nats]")
    python experiments/hpo.py --algo bohb --estimator last --data_dir DATA \
        --benchmark NATS-tss-v1_0-3ffb9-simple --save runs/hpo_bohb_last
    # several workers on one study: the same command on each machine, one shared database
    python experiments/hpo.py --algo hyperband --data_dir DATA \
        --storage postgresql://user:password@host/jnas --save runs/hpo_worker
    # a demonstration in minutes on a laptop CPU, no download
    python experiments/hpo.py --dataset digits --train_size 600 --val_size 300 \
        --init_channels 8 --cells_per_stage 1 --batch_size 64 --max_budget 8 --n_trials 12 \
        --save runs/hpo_digits

Rerunning a command continues its study (a killed trial is rerun); raising --n_trials extends
it. Outputs in --save: trials.csv, best.json, progress.png, config.json and, by default, the
study itself (study.db).
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.hpo_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
