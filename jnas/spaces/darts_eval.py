"""The DARTS space's discrete network, trained from scratch to evaluate a genotype.

The official evaluation network (quark0/darts cnn/model.py, `NetworkCIFAR`): a 3x3 stem of
3C channels and BatchNorm, `layers` cells with reduction cells at 1/3 and 2/3 of the depth,
global average pooling and a linear classifier. A cell applies the genotype's two ops per node
to the chosen states and sums them; its output concatenates the states in the genotype's
concat list. BatchNorm is affine and pooling has none. In training, every op but the identity
goes through drop path, and an auxiliary head reads the output of the cell at 2/3 of the
depth. A node's missing edge (`NO_EDGE`, from FairDARTS's threshold derivation) adds nothing,
and a node with no edge is left out of the concatenation, as FairDARTS's evaluation cell
(xiaomi-automl/FairDARTS 270cfc9, fairdarts/model.py L60-117, `DCOCell`) leaves it out; that
cell drops paths on each node's sum (L113-114), here each op's output is dropped as DARTS's.
A genotype with an empty reduction cell is GDAS's: its reduction cells are the fixed
reduction cell (FRC).

Called as `model.apply(variables, x, drop_prob, rngs={"dropout": key},
mutable=["batch_stats"])` -> `(logits, auxiliary logits or None)`; `drop_prob` may be traced,
so one compiled step serves every epoch of its schedule. With "intermediates" mutable too, the
updates hold `intermediates["features"] == (pooled,)`: the classifier's input.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jnas.errors import JnasError
from jnas.genotype import Genotype, is_fixed_reduction
from jnas.ops import Identity, PatchConv, batch_norm, drop_path, make_op
from jnas.spaces.darts_cells import FixedReductionCell, preprocess, reduction_layers


class EvalCell(nn.Module):
    """One cell of the genotype: normal, or reduction (stride 2 on the edges from the inputs)."""

    genotype: Genotype
    channels: int
    reduction: bool
    reduction_prev: bool
    train: bool = True

    @nn.compact
    def __call__(self, s0, s1, drop_prob):
        c, g = self.channels, self.genotype
        if self.reduction:
            gene, concat = g.reduce, g.reduce_concat
        else:
            gene, concat = g.normal, g.normal_concat
        if not concat:
            cell = "reduction" if self.reduction else "normal"
            raise JnasError(
                f"the genotype's {cell} cell has no edge, so no output to train (FairDARTS: "
                "no op weight reached `op_threshold`; search longer or lower it)"
            )
        states = list(preprocess(c, self.reduction_prev, True, self.train, s0, s1))
        for node in range(len(gene) // 2):
            total = 0.0  # a node with no edge: never read (`jnas.genotype.validate_genotype`)
            for name, source in gene[2 * node : 2 * node + 2]:
                if name == "none":
                    continue
                stride = 2 if self.reduction and source < 2 else 1
                op = make_op(name, c, stride, affine=True, train=self.train)
                h = op(states[source])
                if self.train and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob, self.make_rng("dropout"))
                total = total + h
            states.append(total)
        return jnp.concatenate([states[i] for i in concat], axis=-1)


class AuxiliaryHead(nn.Module):
    """DARTS's `AuxiliaryHeadCIFAR`: ReLU, 5x5 average pooling of stride 3, 1x1 convolution to
    128 channels, BN, ReLU, 2x2 convolution to 768, BN, ReLU, linear classifier.

    The official head is written for the 8x8 maps of 32x32 images (pooled to 2x2, then 1x1).
    Smaller maps (8x8 digits reach it as 2x2) skip the pooling, and the 2x2 convolution's output
    is averaged over its positions: on 8x8 maps that is the official head exactly (one
    position), and the parameters are the same for every image size.
    """

    num_classes: int
    train: bool = True

    @nn.compact
    def __call__(self, x):
        if min(x.shape[1:3]) < 2:
            raise JnasError(
                f"the auxiliary head needs maps of at least 2x2 at 2/3 of the depth, got "
                f"{x.shape[1]}x{x.shape[2]}: use larger images or `auxiliary_weight` 0"
            )
        x = nn.relu(x)
        if min(x.shape[1:3]) >= 5:
            x = nn.avg_pool(x, (5, 5), (3, 3), "VALID")
        x = nn.relu(batch_norm(self.train, affine=True)(PatchConv(128)(x)))
        x = nn.Conv(768, (2, 2), padding="VALID", use_bias=False)(x)
        x = nn.relu(batch_norm(self.train, affine=True)(x))
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class EvalNetwork(nn.Module):
    """The official `NetworkCIFAR` of `genotype`; parameters of the auxiliary head are under
    `auxiliary_head` (created when `auxiliary`, used in training only)."""

    genotype: Genotype
    num_classes: int
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = False
    stem_multiplier: int = 3
    train: bool = True

    @nn.compact
    def __call__(self, x, drop_prob=0.0):
        if x.ndim != 4 or min(x.shape[1:3]) < 4:
            raise JnasError(f"inputs must be NHWC images of at least 4x4, got shape {x.shape}")
        c = self.init_channels
        x = nn.Conv(self.stem_multiplier * c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
        s0 = s1 = batch_norm(self.train, affine=True)(x)
        fixed = is_fixed_reduction(self.genotype)
        reductions = reduction_layers(self.layers, None)
        reduction_prev, aux = False, None
        for i in range(self.layers):
            reduction = i in reductions
            if reduction:
                c *= 2
            if reduction and fixed:
                frc = FixedReductionCell(c, reduction_prev, self.train, affine=True)
                out = frc(s0, s1, drop_prob)
            else:
                cell = EvalCell(self.genotype, c, reduction, reduction_prev, self.train)
                out = cell(s0, s1, drop_prob)
            s0, s1, reduction_prev = s1, out, reduction
            if i == 2 * self.layers // 3 and self.auxiliary and self.train:
                aux = AuxiliaryHead(self.num_classes, self.train, name="auxiliary_head")(s1)
        features = jnp.mean(s1, axis=(1, 2))
        self.sow("intermediates", "features", features)  # the classifier's input, on request
        return nn.Dense(self.num_classes)(features), aux
