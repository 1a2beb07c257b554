"""RobustDARTS's searches (Zela et al., ICLR 2020): DARTS's second-order step (the official
scripts/DARTS_search.sh L19 passes --unrolled) with the Hessian's dominant eigenvalue tracked
every epoch and DARTS-ES's early stop (`jnas.robust`). R-DARTS(L2) runs it at several weight
decays (`jnas.robust.l2_sweep`). Every other setting is DARTS's, as the official
src/search/args.py L28-49 keeps them."""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register
from jnas.algorithms.darts import darts_gradient

RDARTS = register(
    Algorithm(
        name="rdarts",
        order=("arch", "weights"),
        relaxation="darts",
        arch_gradient=darts_gradient,
        options=("second_order", "hessian"),
        defaults={"second_order": True, "track_hessian": True, "early_stop": True},
        doc=__doc__,
    )
)
