"""Search spaces by name (`SPACES`); importing this package registers them."""

from jnas.spaces.base import SPACES, Space, register, space_class, space_from_config
from jnas.spaces.darts import DartsSpace, SearchCell, SearchNetwork, check_fixed_reduction
from jnas.spaces.darts_cells import FixedReductionCell
from jnas.spaces.nb201 import NB201Space

__all__ = [
    "SPACES",
    "DartsSpace",
    "FixedReductionCell",
    "NB201Space",
    "SearchCell",
    "SearchNetwork",
    "Space",
    "check_fixed_reduction",
    "register",
    "space_class",
    "space_from_config",
]
