"""Search algorithms by name (`ALGORITHMS`); importing this package registers them."""

from jnas.algorithms import darts, gdas, milenas, snas  # noqa: F401  (registration)
from jnas.algorithms.base import ALGORITHMS, Algorithm, ArchContext, algorithm, register

__all__ = ["ALGORITHMS", "Algorithm", "ArchContext", "algorithm", "register"]
