"""Search algorithms by name (`ALGORITHMS`); importing this package registers them."""

from jnas.algorithms import (  # noqa: F401  (registration)
    asap,
    darts,
    fairdarts,
    gdas,
    milenas,
    pcdarts,
    proxyless,
    rdarts,
    rsps,
    snas,
)
from jnas.algorithms.base import ALGORITHMS, Algorithm, ArchContext, algorithm, register

__all__ = ["ALGORITHMS", "Algorithm", "ArchContext", "algorithm", "register"]
