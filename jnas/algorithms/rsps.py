"""Random search with weight sharing (RSPS; Li & Talwalkar, UAI 2019): every step trains the
supernet's weights on one uniformly drawn architecture (the `uniform` relaxation); there is
no architecture step. After every epoch `candidates` architectures drawn uniformly are
scored with the shared weights, each on its own batch of `candidate_batch_size` validation
images, and the best is the epoch's architecture (`jnas.selection`).

Sources. liamcli/randomNAS_release @ 6513a0a: searchers/random_weight_share.py L72-79 (one
sampled architecture per training batch), L81-115 (the final selection: 1000 architectures
on 10 validation batches each, then the 10 best on the whole validation split) and L170-173
(the defaults: 100 epochs, batch 64); benchmarks/cnn/darts/darts_wrapper_discrete.py L31-49
(DARTS's weight training: SGD 0.025 cosine to 0.001, momentum 0.9, weight decay 3e-4, 8 cells,
half of the training set as validation). NAS-Bench-201's RSPS (D-X-Y/AutoDL-Projects @
f46486e, exps/NAS-Bench-201-algos/RANDOM-NAS.py L107-131 and L264-272,
scripts-search/NAS-Bench-201-algos/RANDOM-NAS.sh --select_num 100, configs/nas-benchmark/
algos/RANDOM.config: 250 epochs, test batch 512) selects after every epoch from 100
architectures, each on one validation batch of 512: jnas's defaults. Li & Talwalkar's
second stage (the 10 best rescored on the whole split) is not run, and their draw takes
'none' among a DARTS cell's ops (their PRIMITIVES), where jnas's cells take a real op
(`jnas.sampling`).
"""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register

RSPS = register(
    Algorithm(
        name="rsps",
        order=("weights",),
        relaxation="uniform",
        options=("candidates", "candidate_batch_size"),
        defaults={"epochs": 100},
        doc=__doc__,
    )
)
