"""Relaxations of alpha, by name (`RELAXATIONS`); importing this package registers them."""

from jnas.relax import gdas, snas, softmax  # noqa: F401  (registration)
from jnas.relax.base import RELAXATIONS, Relaxation, make_relaxation, register

__all__ = ["RELAXATIONS", "Relaxation", "make_relaxation", "register"]
