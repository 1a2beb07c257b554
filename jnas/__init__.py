"""jnas: differentiable neural architecture search in JAX.

The search algorithms are pure transforms over `loss_fn(w, alpha, batch)` and any pytrees:

>>> import jnas
>>> val_loss, dalpha = jnas.darts_hypergrad(loss_fn, w, alpha, train_batch, val_batch, lr=0.025)
"""

from jnas.errors import JnasError
from jnas.evaluation import count_params
from jnas.federated import client_steps, federated_round, weighted_average
from jnas.genotype import (
    DARTS_V1,
    DARTS_V2,
    PRIMITIVES,
    Genotype,
    derive_genotype,
    load_genotype,
    save_genotype,
    validate_genotype,
)
from jnas.partition import partition
from jnas.spaces import SearchCell, SearchNetwork
from jnas.transforms import (
    darts_hypergrad,
    gumbel_softmax,
    hessian_eigenvalues,
    maml_adapt,
    maml_meta_grad,
    milenas_hypergrad,
    reinforce_grad,
    unrolled_step,
)

__all__ = [
    "DARTS_V1",
    "DARTS_V2",
    "PRIMITIVES",
    "Genotype",
    "JnasError",
    "SearchCell",
    "SearchNetwork",
    "client_steps",
    "count_params",
    "darts_hypergrad",
    "derive_genotype",
    "federated_round",
    "gumbel_softmax",
    "hessian_eigenvalues",
    "load_genotype",
    "maml_adapt",
    "maml_meta_grad",
    "milenas_hypergrad",
    "partition",
    "reinforce_grad",
    "save_genotype",
    "unrolled_step",
    "validate_genotype",
    "weighted_average",
]

__version__ = "0.1.0"
