"""RobustDARTS (Zela et al., ICLR 2020): the Hessian's dominant eigenvalue as a stop signal
(DARTS-ES) and L2 regularisation of the weights (R-DARTS(L2)).

The eigenvalue itself is `jnas.hessian_eigenvalues`, logged by any search with
`track_hessian` (`Search.hessian_step`); this module reads the logged rows.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jnas.errors import JnasError
from jnas.io import write_json

EIGENVALUE = "hessian_eigenvalue"

# The paper's L2 factors for R-DARTS(L2): DARTS's 3e-4 times 1, 3, 9, 27 (the official
# scripts/start_search.sh L5 also runs 243e-4).
L2_FACTORS = (3e-4, 9e-4, 27e-4, 81e-4)


def local_average(values, epoch: int, window: int) -> float:
    """The mean of `values` (epoch 1 first) over the `window` epochs centred on `epoch`, cut
    at the first epoch; the official EVLocalAvg (src/utils.py L67-115) centres its window
    the same way, over every second epoch."""
    half = window // 2
    return float(np.mean(values[max(epoch - half, 1) - 1 : epoch + half]))


def darts_es(values, window: int, lag: int, ratio: float, start: int) -> int | None:
    """DARTS-ES on the eigenvalues `values` of epochs 1..len(values): the epoch i - k whose
    architecture to keep once `avg(i - k) / avg(i) < ratio`, where avg is the centred local
    average (`local_average`), i the newest epoch whose window is complete and k = `lag`;
    None while the criterion does not hold or i - k < `start`.

    The paper states k = 5 and 0.75. The official code (src/utils.py L117-140, args.py
    L61-64) computes the eigenvalue every 2 epochs, averages 5 of them, compares averages 8
    epochs apart with the factor 1.3 (0.77) and keeps no epoch before 10; `start` is that
    10.
    """
    i = len(values) - window // 2
    if i - lag < start:
        return None
    earlier, now = (local_average(values, e, window) for e in (i - lag, i))
    return i - lag if earlier / now < ratio else None


def l2_sweep(config, factors, run_search, *, progress: bool = True) -> dict:
    """R-DARTS(L2): one search per weight decay in `factors`, each in `save/l2_<factor>`,
    then the one with the best final validation accuracy of its search network (the paper's
    selection by validation error; the official code records only that error per run,
    train_search.py L324-325). Writes `save/l2_sweep.json`; returns it."""
    if not factors or any(f <= 0 for f in factors):
        raise JnasError(f"`l2_factors` must be positive weight decays, got {list(factors)}")
    runs = []
    for factor in factors:
        save = os.path.join(config.save, f"l2_{factor:g}")
        rows = run_search(dataclasses.replace(config, weight_decay=factor, save=save),
                          progress=progress)
        # Early stopped: the kept epoch's accuracy and architecture (train_search.py L178-194).
        kept = rows[rows[-1]["early_stop"] - 1] if "early_stop" in rows[-1] else rows[-1]
        runs.append({"weight_decay": factor, "save": save, "epoch": kept["epoch"],
                     "valid_acc": kept["valid_acc"], "genotype": kept["genotype"]})
    best = max(runs, key=lambda r: r["valid_acc"])
    result = {"runs": runs, "best": best}
    write_json(os.path.join(config.save, "l2_sweep.json"), result)
    return result
