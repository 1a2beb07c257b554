"""Federated averaging transforms with the clients as an array axis.

They know nothing of networks: a client's state is any pytree and its local step any
`step_fn(state, *inputs) -> (state, metrics)` (a search step, a training step). Stacking
the clients' states and inputs on a leading axis makes all clients one program, vmapped on
one device or split over a device mesh's client axis (`jnas.fednas`).

A round (McMahan et al., 2017; FedNAS, He et al., 2020):

1. every client starts from the server's pytree (`start(server) -> state`: a fresh local
   state, e.g. new optimizer states);
2. every client runs its local steps on its own data (`client_steps`);
3. the server takes the average of what the clients share (`share(state) -> pytree`: the
   weights, alpha, BatchNorm statistics) weighted by their sample counts
   (`weighted_average`).

Every client runs the same number of steps; unequal data sizes enter through the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jnas.errors import JnasError

PyTree = Any


def weighted_average(stacked: PyTree, weights) -> PyTree:
    """`sum_k weights[k] / sum(weights) * stacked[k]` for every (float) leaf, over the leading
    (client) axis.

    Example:
      >>> w = jnas.weighted_average({"w": jnp.stack([w1, w2])}, jnp.array([600, 200]))["w"]
      >>> # = 0.75 * w1 + 0.25 * w2
    """
    weights = jnp.asarray(weights, jnp.float32)
    if weights.ndim != 1:
        raise JnasError(f"`weights` must be one number per client, got shape {weights.shape}")
    for leaf in jax.tree.leaves(stacked):
        if leaf.shape[:1] != weights.shape:
            raise JnasError(
                f"every leaf needs a leading client axis of {weights.shape[0]} (one row per "
                f"weight), got a leaf of shape {leaf.shape}"
            )
    share = weights / jnp.sum(weights)
    return jax.tree.map(lambda x: jnp.tensordot(share.astype(x.dtype), x, axes=1), stacked)


def broadcast_clients(tree: PyTree, clients: int) -> PyTree:
    """`tree` repeated on a new leading client axis of size `clients`."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (clients, *jnp.shape(x))), tree)


def client_steps(step_fn: Callable, states: PyTree, inputs: tuple) -> tuple[PyTree, dict]:
    """Every client's local steps: `step_fn` scanned over the step axis of its inputs and
    vmapped over the clients.

    `states`: the clients' states, stacked (leading axis: clients). `inputs`: a tuple of
    pytrees with leading axes (clients, steps), e.g. (train batches, validation batches,
    keys). Returns the final states and the step metrics with axes (clients, steps).

    Example:
      >>> states, metrics = jnas.client_steps(search_step, states, (train, val, keys))
    """

    def one_client(state, xs):
        return jax.lax.scan(lambda s, x: step_fn(s, *x), state, xs)

    return jax.vmap(one_client)(states, inputs)


def federated_round(step_fn: Callable, server: PyTree, inputs: tuple, weights, *,
                    start: Callable, share: Callable) -> tuple[PyTree, dict]:
    """One round of federated averaging: every client starts from `server`, runs its steps
    (`client_steps`), and the server becomes the `weights`-weighted average of what the
    clients `share`. Returns (the new server pytree, the step metrics (clients, steps)).

    Example (FedNAS: local MiLeNAS steps; weights, alpha and BatchNorm statistics averaged):
      >>> server, metrics = jnas.federated_round(
      ...     search_step, server, (train, val, keys), sample_counts,
      ...     start=fresh_search_state, share=lambda s: {"params": s.params, "alpha": s.alpha})
    """
    clients = jnp.shape(weights)[0]
    states = broadcast_clients(start(server), clients)
    states, metrics = client_steps(step_fn, states, inputs)
    return weighted_average(jax.vmap(share)(states), weights), metrics
