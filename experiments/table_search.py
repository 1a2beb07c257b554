r"""Search NAS-Bench-201 without weight sharing: every drawn cell's accuracy is looked up in a
benchmark table, as the benchmark paper's REINFORCE and random-search baselines do.

    # REINFORCE with ENAS's LSTM controller on the CIFAR-10 test accuracy, 500 cells
    python experiments/table_search.py --benchmark NATS-tss-v1_0-3ffb9-simple \
        --metric cifar10_test --save runs/table_reinforce
    # random search over the same table
    python experiments/table_search.py --algo random --benchmark table.csv \
        --save runs/table_random
    # NAS-Bench-201's REINFORCE settings on the controller (Adam 0.001, momentum 0.9)
    python experiments/table_search.py --benchmark table.csv --learning_rate 0.001 \
        --baseline_decay 0.9 --entropy_weight 0

The table is a CSV with an 'arch' column of benchmark strings and metric columns (percent), or
a NATS-Bench topology file (pip install "jnas[nats]"). Writes history.jsonl, result.json and
progress.png into --save; rerunning the same command resumes, and a larger --samples extends a
finished run.
"""

from __future__ import annotations

import sys

from jnas import cli


def main(argv=None) -> int:
    return cli.table_search_main(__doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
