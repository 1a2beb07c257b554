"""Relaxations of alpha, by name (`RELAXATIONS`); importing this package registers them."""

from jnas.relax import (  # noqa: F401  (registration)
    asap,
    fair,
    gdas,
    pcdarts,
    proxyless,
    snas,
    softmax,
    uniform,
)
from jnas.relax.base import RELAXATIONS, Relaxation, make_relaxation, register

__all__ = ["RELAXATIONS", "Relaxation", "make_relaxation", "register"]
