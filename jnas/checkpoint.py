"""Checkpoints of a search state with Orbax, one per epoch, resumable.

The state is stored as its flat list of leaves and restored into the tree structure of a
freshly initialised state, so any pytree (optax NamedTuples included) round-trips exactly.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

from jnas.errors import JnasError


class Checkpointer:
    """Saves `(epoch, state)` under `directory/<epoch>`; keeps the newest `max_to_keep`."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        )

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, state) -> None:
        self._manager.save(epoch, args=ocp.args.StandardSave({"leaves": jax.tree.leaves(state)}))
        self._manager.wait_until_finished()

    def restore(self, epoch: int, like):
        """Restore the state saved at `epoch` into the structure of `like`."""
        leaves, treedef = jax.tree.flatten(like)
        # Restored with the shardings of `like` (replicated over the run's mesh).
        abstract = {
            "leaves": [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in leaves]
        }
        path = os.path.join(self.directory, str(epoch))
        # Orbax logs its own error before raising; the message below replaces both.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.CRITICAL)
        try:
            restored = self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
            return jax.tree.unflatten(treedef, restored["leaves"])
        except Exception:  # Orbax raises many types; all mean the same to the user.
            raise JnasError(
                f"the checkpoint {path} could not be read: it is incomplete or damaged (a "
                "file in it is missing or was cut short). Nothing was deleted: move that "
                "folder away to resume from the previous checkpoint, or pass a new `save` to "
                "start afresh."
            ) from None
        finally:
            absl_logger.setLevel(level)
