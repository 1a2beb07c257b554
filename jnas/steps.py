"""What every jitted step uses: the classification loss and accuracy with their shape checks,
and variable initialisation compiled at XLA's lowest optimisation level."""

import chex
import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels):
    _check_labels(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels):
    _check_labels(logits, labels)
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def masked_sums(logits, batch):
    """(loss sum, correct sum, count) over the real rows of a padded evaluation batch
    (`jnas.data.eval_batches`: "mask" is 1 on real rows)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    correct = jnp.argmax(logits, -1) == batch["y"]
    mask = batch["mask"]
    return jnp.sum(losses * mask), jnp.sum(correct * mask), jnp.sum(mask)


def _check_labels(logits, labels):
    """One integer label per row of logits: otherwise optax broadcasts or fails inside XLA."""
    chex.assert_rank([logits, labels], [2, 1])
    chex.assert_equal_shape_prefix([logits, labels], 1)
    chex.assert_type(labels, int)


def init_variables(init, *args):
    """`jax.jit(init)(*args)` compiled at XLA's optimisation level 0.

    Init runs once, and its random initialisers compile 3x slower than the forward pass at
    the default level.
    """
    compiled = jax.jit(init).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0}
    )
    return compiled(*args)
