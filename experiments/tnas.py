r"""Few-shot meta-learning: MAML, Auto-MAML and T-NAS (Finn et al. 2017; Lian et al. 2020).

    # T-NAS, Mini-ImageNet 5-way 1-shot (the defaults), from the packed file or the
    # Ravi & Larochelle layout (images/ + train.csv, val.csv, test.csv)
    python experiments/tnas.py --data_dir ../shared/data
    # MAML on Omniglot 5-way 1-shot with the paper's Omniglot inner loop
    python experiments/tnas.py --algo maml --dataset omniglot --data_dir ../shared/data \
        --meta_batch 32 --inner_steps 1 --inner_lr_w 0.4 --inner_steps_test 3 --save runs/maml
    # Auto-MAML: one meta-learned architecture shared by all tasks
    python experiments/tnas.py --algo auto_maml --data_dir ../shared/data --save runs/auto_maml

The meta-gradient is exact (second order through the inner loop) unless --first_order. Tasks
of a meta-batch run in parallel (vmap) and are split over all local devices. Writes
metrics.jsonl, test.json (mean and 95% CI over --test_episodes test episodes), genotype.json
(Auto-MAML, T-NAS) and checkpoints into --save; rerunning resumes.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.meta_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
