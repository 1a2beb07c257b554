"""FairDARTS (Chu et al., ECCV 2020): independent sigmoid op weights and the zero-one loss.

Every op weighs sigmoid(alpha) on its own (the "fair" relaxation, `jnas.relax.fair`), and the
architecture step descends the validation loss plus `w01` times the zero-one loss, first
order, before the weight step: each iteration runs `Architect.step` on a validation batch,
then the weight step (fairdarts/train_search.py L193-220; architect.py L20-26, which has no
unrolled step). The derived cell keeps the edges whose op weight reaches `op_threshold`.

Defaults: the official CIFAR-10 search (xiaomi-automl/FairDARTS 270cfc9, fairdarts/
train_search.py, also the README's command, README.md L20): batch 128 (L23), learning rate
0.005 (L24) cosine to 0.001 (L25), momentum 0.9, weight decay 3e-4, 50 epochs, C=16, 8 cells,
gradient clipping 5, half of the training set for the architecture (L26-45), architecture
Adam 3e-3 (L46) with betas (0.9, 0.999) (`--arch_lr_gamma` L47; architect.py L15-16) and
weight decay 1e-3 (L48), w01 10 (L29), threshold 0.85 (L41), and no warm-up. The candidate
ops are DARTS's without 'none' (genotypes.py L8-16).

On NAS-Bench-201, for which FairDARTS published no search, the benchmark's DARTS settings
(batch 64, 0.025 -> 0.001, architecture Adam 3e-4 with betas (0.5, 0.999), the benchmark's 5
ops; `NB201Space.search_defaults`) replace these, so that a comparison with DARTS there
differs in the method alone: the sigmoid weights, the zero-one loss and the threshold.
"""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register
from jnas.algorithms.darts import first_order
from jnas.genotype import PRIMITIVES

FAIRDARTS = register(
    Algorithm(
        name="fairdarts",
        order=("arch", "weights"),
        relaxation="fair",
        arch_gradient=first_order,
        defaults={
            "batch_size": 128,
            "learning_rate": 0.005,
            "arch_learning_rate": 3e-3,
            "arch_beta1": 0.9,
            "primitives": tuple(p for p in PRIMITIVES if p != "none"),
        },
        doc=__doc__,
    )
)
