"""The uniform sampler of random search with weight sharing (RSPS; Li & Talwalkar, UAI 2019):
every step trains one architecture drawn uniformly from the space, whatever alpha holds.

Per step one discrete cell per cell type is drawn (`jnas.sampling.uniform_actions`), shared
by the batch, and the supernet runs that path alone. On the DARTS space a cell takes two
distinct inputs per node and an op other than 'none' on each (randomNAS_release 6513a0a,
benchmarks/cnn/darts/darts_wrapper_discrete.py L258-272, draws the inputs so too but the ops
from all 8, 'none' included); on NAS-Bench-201 one op per edge, 'none' included
(AutoDL-Projects f46486e, xautodl/models/cell_searchs/search_model_random.py L75-87). alpha
is never read: an algorithm on this sampler has nothing to derive from it and selects its
architecture instead (`jnas.search.trains_alpha`, `jnas.selection`).

`space` is the space whose cells it draws; `jnas.search.search_relaxation` gives it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jnas.errors import JnasError
from jnas.relax.base import Relaxation, register
from jnas.sampling import supernet_inputs, to_ops, uniform_actions


@register
@dataclasses.dataclass(frozen=True)
class Uniform(Relaxation):
    """Every step's path a uniformly drawn architecture of `space` (module docstring)."""

    name: ClassVar[str] = "uniform"
    space: Any = None  # a jnas.spaces.Space

    def train_weights(self, alpha, key, epoch):
        """(one-hot weights, single paths) of a uniformly drawn architecture: the supernet
        computes that architecture's network."""
        del alpha, epoch
        if self.space is None:
            raise JnasError("the uniform relaxation draws the cells of a space: build it with "
                            "`jnas.search.search_relaxation`, which gives it `space`")
        ops = to_ops(self.space, uniform_actions(self.space, key))
        return supernet_inputs(ops, len(self.space.primitives))
