"""DARTS's continuous relaxation (Liu et al., ICLR 2019): every edge mixes all ops with
softmax(alpha) weights."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jnas.relax.base import Relaxation, register


@register
@dataclasses.dataclass(frozen=True)
class Softmax(Relaxation):
    name: ClassVar[str] = "darts"

    def train_weights(self, alpha, key, epoch):
        del key, epoch
        return self.eval_weights(alpha)
