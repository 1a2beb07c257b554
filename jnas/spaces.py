"""The DARTS search space: search cell and search network as Flax modules.

The architecture parameters are an ARGUMENT of `SearchNetwork.__call__`, never a variable of
the module, so `alpha` is its own pytree: `{"normal": (edges, ops), "reduce": (edges, ops)}`.

Compile time is the cost that binds (a Python loop over 8 cells x 14 edges x 8 ops takes
minutes to compile), so a cell traces its mixed op once per group of edges that share an input
state, with `nn.vmap` over stacked parameters: the 8 edges from the two cell inputs form one
group (they depend on the inputs alone), then the edges out of each intermediate node.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnas.errors import JnasError
from jnas.genotype import CELL_TYPES, PRIMITIVES, edge_index, num_edges
from jnas.ops import FactorizedReduce, MixedOp, ReLUConvBN, batch_norm, check_primitives


def edge_groups(steps: int) -> list[list[tuple[int, int]]]:
    """Edges `(source, node)` grouped by the states they read, in the order they can run."""
    groups = [[0, 1]] + [[s] for s in range(2, steps + 1)]
    return [[(s, n) for s in sources for n in range(max(0, s - 1), steps)] for sources in groups]


# One mixed op per edge of a group: parameters and BatchNorm statistics stacked on axis 0.
_EdgeGroup = nn.vmap(
    MixedOp,
    in_axes=(0, 0),
    out_axes=0,
    variable_axes={"params": 0, "batch_stats": 0},
    split_rngs={"params": True},
)


class SearchCell(nn.Module):
    """A DARTS cell: 2 inputs, `steps` nodes, every node mixes all earlier states.

    `weights` has shape (edges, ops); the output concatenates the last `multiplier` nodes.
    """

    channels: int
    reduction: bool
    reduction_prev: bool
    primitives: tuple[str, ...] = PRIMITIVES
    steps: int = 4
    multiplier: int = 4
    train: bool = True

    @nn.compact
    def __call__(self, s0, s1, weights):
        c = self.channels
        if self.reduction_prev:
            s0 = FactorizedReduce(c, affine=False, train=self.train)(s0)
        else:
            s0 = ReLUConvBN(c, affine=False, train=self.train)(s0)
        s1 = ReLUConvBN(c, affine=False, train=self.train)(s1)

        states = [s0, s1]
        incoming: list[list[jax.Array]] = [[] for _ in range(self.steps)]
        for group in edge_groups(self.steps):
            sources = sorted({s for s, _ in group})
            stride = 2 if self.reduction and sources[0] < 2 else 1
            rows = np.array([edge_index(n, s) for s, n in group])
            xs = jnp.stack([states[s] for s, _ in group])
            ys = _EdgeGroup(c, stride, self.primitives, self.train)(xs, weights[rows])
            # Groups run in source order, so each node sums its inputs in the official order.
            for k, (_, n) in enumerate(group):
                incoming[n].append(ys[k])
            states.append(sum(incoming[sources[-1] - 1]))
        return jnp.concatenate(states[-self.multiplier :], axis=-1)


class SearchNetwork(nn.Module):
    """DARTS's search network: stem, `layers` cells, global average pool, linear classifier.

    Reduction cells sit at `layers // 3` and `2 * layers // 3`. Call as
    `model.apply(variables, x, alpha, mutable=["batch_stats"])` with NHWC images `x` and
    `alpha = {"normal": (edges, ops), "reduce": (edges, ops)}` (raw logits: the network takes the
    softmax per edge).
    """

    num_classes: int
    init_channels: int = 16
    layers: int = 8
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = PRIMITIVES
    train: bool = True

    def alpha_shape(self) -> tuple[int, int]:
        return num_edges(self.steps), len(self.primitives)

    def init_alpha(self, key) -> dict[str, jax.Array]:
        """DARTS's initialisation: 1e-3 * N(0, 1) for each cell type."""
        keys = jax.random.split(key, len(CELL_TYPES))
        shape = self.alpha_shape()
        return {
            t: 1e-3 * jax.random.normal(k, shape) for t, k in zip(CELL_TYPES, keys, strict=True)
        }

    def reduction_layers(self) -> tuple[int, ...]:
        return (self.layers // 3, 2 * self.layers // 3)

    def check_alpha(self, alpha) -> None:
        want = self.alpha_shape()
        for t in CELL_TYPES:
            if t not in alpha:
                raise JnasError(f"alpha needs keys {CELL_TYPES}, got {sorted(alpha)}")
            if tuple(alpha[t].shape) != want:
                raise JnasError(
                    f"alpha[{t!r}] has shape {tuple(alpha[t].shape)}, the network needs {want} "
                    f"({want[0]} edges for {self.steps} nodes, {want[1]} candidate ops)"
                )

    @nn.compact
    def __call__(self, x, alpha):
        primitives = check_primitives(self.primitives)
        self.check_alpha(alpha)
        if x.ndim != 4 or min(x.shape[1:3]) < 8:
            raise JnasError(f"inputs must be NHWC images of at least 8x8, got shape {x.shape}")
        weights = {t: jax.nn.softmax(alpha[t], axis=-1) for t in CELL_TYPES}

        c = self.init_channels
        x = nn.Conv(self.stem_multiplier * c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
        s0 = s1 = batch_norm(self.train, affine=True)(x)
        reduction_prev = False
        for i in range(self.layers):
            reduction = i in self.reduction_layers()
            if reduction:
                c *= 2
            cell = SearchCell(
                c, reduction, reduction_prev, primitives, self.steps, self.multiplier, self.train
            )
            s0, s1 = s1, cell(s0, s1, weights["reduce" if reduction else "normal"])
            reduction_prev = reduction
        return nn.Dense(self.num_classes)(jnp.mean(s1, axis=(1, 2)))
