"""What every run config shares: fields that carry their own help text, and the checks of
values that any config may hold (finite floats, a usable seed, an output folder).

The command line is generated from the fields (`jnas.cli`), so a field's help and default
are written once, here in the config that reads them.
"""

from __future__ import annotations

import dataclasses
import math
import os

from jnas.errors import JnasError


def option(default, help: str, **metadata):
    """A config field with its help text (and e.g. `choices`) for the command line."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def check_common(config) -> None:
    """Raise on a non-finite float field, a seed outside [0, 2**32), or a `save` that cannot
    be a folder (empty, or an existing file)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise JnasError(f"`{f.name}` must be a finite number, got {value}")
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise JnasError(f"`seed` must be an integer in [0, 2**32), got {seed!r}")
    save = config.save
    if not save:
        raise JnasError("`save` is empty: pass the folder the run writes into")
    if os.path.exists(save) and not os.path.isdir(save):
        raise JnasError(
            f"`save` {save!r} is a file, not a folder: pass a folder (a new one starts a run, "
            "the folder of a run resumes it)"
        )


def check_sgd(config) -> None:
    """The SGD settings that searches and evaluation training share: positive `batch_size`,
    `epochs` and `learning_rate`, `learning_rate_min` in [0, `learning_rate`], `grad_clip` >= 0
    (0: no clipping)."""
    for name in ("batch_size", "epochs", "learning_rate"):
        if getattr(config, name) <= 0:
            raise JnasError(f"`{name}` must be positive, got {getattr(config, name)}")
    if not 0 <= config.learning_rate_min <= config.learning_rate:
        raise JnasError("`learning_rate_min` must lie in [0, `learning_rate`]")
    if config.grad_clip < 0:
        raise JnasError(f"`grad_clip` must be >= 0 (0: no clipping), got {config.grad_clip}")
