"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalisation.

1/K of each edge's channels go through its ops, the rest bypass it and the channels are
shuffled (`partial_channels`, `jnas.ops.MixedOp`); a softmax of per-edge betas over each
node's inputs weights the edges (the "pcdarts" relaxation, `jnas.relax.pcdarts`). The
architecture step is DARTS's first order, before the weight step, and runs only after
`warmup_epochs` epochs of weight steps. One Adam updates alpha and beta.

Defaults: the official CIFAR-10 search (yuhuixu1993/PC-DARTS b74702f, train_search.py):
batch 256 (L24), learning rate 0.1 (L25) cosine to 0 (L26; the V100 branch's 0.001), 50
epochs (L31), architecture Adam 6e-4 (L43), weight decay 1e-3 (L44), first order (L42),
architecture steps from epoch 15 on (L156: `if epoch>=15`), K = 4 (model_search.py L31).

On NAS-Bench-201, for which PC-DARTS published no search code, the benchmark's DARTS
settings (batch 64, 0.025 -> 0.001, architecture Adam 3e-4; `NB201Space.search_defaults`)
replace these optimiser settings, as the third-party NAS-Bench-201 PC-DARTS of few-shot-NAS
(aoiang/few-shot-NAS ec366c1, search_algos/PCDARTS/one-shot/PCDARTS.sh L44-47) runs on its
copy of the benchmark's DARTS config, so that a comparison with DARTS there differs in the
method alone: K = 4, the edge normalisation and the 15 warm-up epochs.
"""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register
from jnas.algorithms.darts import first_order

PCDARTS = register(
    Algorithm(
        name="pcdarts",
        order=("arch", "weights"),
        relaxation="pcdarts",
        arch_gradient=first_order,
        defaults={
            "batch_size": 256,
            "learning_rate": 0.1,
            "learning_rate_min": 0.0,
            "epochs": 50,
            "arch_learning_rate": 6e-4,
            "arch_weight_decay": 1e-3,
            "warmup_epochs": 15,
            "partial_channels": 4,
        },
        doc=__doc__,
    )
)
