"""Search steps: explicit state plus one jit-compiled step built from the transforms.

Every step has the signature `(state, train_batch, val_batch, key) -> (state, metrics)` and
takes one architecture step and one weight step (on `train_batch`). The algorithm decides the
architecture gradient and the order, as in each published code:

- `darts`: `darts_hypergrad` on `val_batch`, first or second order; architecture step first.
- `milenas`: `milenas_hypergrad`, `grad_alpha (L_train + lam * L_val)` at the current
  weights; architecture step first (MiLeNAS's code is DARTS's).
- `gdas`: GDAS's first-order `grad_alpha L_val` through the straight-through Gumbel sample,
  on the single-path network; weight step first, as in GDAS's code.

The steps are jitted with the batches split over a device mesh and the rest replicated
(`jnas.sharding`), so the same code runs on one device or many with the same result.

`gumbel=True` gives MiLeNAS the GDAS relaxation (MiLeNAS+GDAS). Under the Gumbel relaxation
each of the two steps draws its own sample (per cell type and edge, shared by the batch),
as GDAS's code samples on every forward pass. Batches are `{"x": float NHWC, "y": int}`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from jnas.errors import JnasError
from jnas.genotype import PRIMITIVES
from jnas.ops import check_primitives
from jnas.sharding import ShardedStep, data_mesh, put_replicated
from jnas.spaces import SearchNetwork, check_fixed_reduction
from jnas.transforms import darts_hypergrad, milenas_hypergrad

ALGORITHMS = ("darts", "milenas", "gdas")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """One search run. Defaults are the DARTS paper's CIFAR-10 search (Liu et al., 2019).

    GDAS's (Dong & Yang, 2019) differ only in `epochs` (240) and add the temperature, linear
    from `tau_max` in the first epoch to `tau_min` in the last; MiLeNAS's (He et al., 2020)
    add `lam`, the weight of the validation loss.
    """

    algorithm: str = "darts"
    dataset: str = "cifar10"
    data_dir: str | None = None
    batch_size: int = 64
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    epochs: int = 50
    init_channels: int = 16
    layers: int = 8
    nodes: int = 4
    primitives: tuple[str, ...] = PRIMITIVES
    train_portion: float = 0.5
    arch_learning_rate: float = 3e-4
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    second_order: bool = False
    hessian: str = "exact"
    lam: float = 1.0
    gumbel: bool = False
    tau_max: float = 10.0
    tau_min: float = 0.1
    fix_reduction: bool = False
    seed: int = 2
    save: str = "runs/darts"
    devices: int | None = None  # per process; None: all local devices

    def __post_init__(self):
        positive = ("batch_size", "epochs", "init_channels", "layers", "nodes", "learning_rate")
        for name in positive:
            if getattr(self, name) <= 0:
                raise JnasError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.learning_rate_min <= self.learning_rate:
            raise JnasError("--learning_rate_min must lie in [0, --learning_rate]")
        check_primitives(self.primitives)
        if self.hessian not in ("exact", "finite_difference"):
            raise JnasError(f"--hessian must be exact or finite_difference, got {self.hessian!r}")
        if self.algorithm not in ALGORITHMS:
            raise JnasError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.second_order and self.algorithm != "darts":
            raise JnasError(f"--second_order is DARTS's unrolled step; {self.algorithm} has none")
        if self.gumbel and self.algorithm != "milenas":
            raise JnasError("gumbel is the relaxation option of milenas (gdas always samples)")
        if not 0 < self.tau_min <= self.tau_max:
            raise JnasError(
                f"the temperature needs 0 < --tau_min <= --tau_max, got --tau_min "
                f"{self.tau_min} and --tau_max {self.tau_max}"
            )
        if self.fix_reduction:
            check_fixed_reduction(self.nodes, self.primitives)
            if self.init_channels % 4:
                raise JnasError(
                    "the fixed reduction cell groups its convolutions by 8 at 2 x "
                    f"--init_channels, so --init_channels must be a multiple of 4, got "
                    f"{self.init_channels}"
                )

    @property
    def single_path(self) -> bool:
        """Whether the network samples one op per edge (GDAS's relaxation)."""
        return self.algorithm == "gdas" or self.gumbel


class SearchState(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any
    alpha: Any
    w_opt_state: Any
    alpha_opt_state: Any


def epoch_cosine_schedule(config: SearchConfig, steps_per_epoch: int) -> optax.Schedule:
    """The official code's CosineAnnealingLR stepped once per epoch: constant within an epoch.

    optax's `alpha` is a fraction of the initial value, hence min/initial.
    """
    per_epoch = optax.cosine_decay_schedule(
        config.learning_rate, config.epochs, alpha=config.learning_rate_min / config.learning_rate
    )
    return lambda count: per_epoch(count // steps_per_epoch)


def tau_schedule(config: SearchConfig, steps_per_epoch: int) -> optax.Schedule:
    """GDAS's temperature: linear from tau_max (first epoch) to tau_min (last), per epoch."""
    span = max(config.epochs - 1, 1)

    def tau(count):
        f = jnp.minimum(count // steps_per_epoch, span) / span
        # Exact at both ends: tau_max - (tau_max - tau_min) rounds in float32.
        return (1 - f) * config.tau_max + f * config.tau_min

    return tau


def weight_optimizer(config: SearchConfig, schedule: optax.Schedule):
    """PyTorch SGD with coupled weight decay after gradient-norm clipping."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def arch_optimizer(config: SearchConfig):
    """PyTorch Adam with coupled weight decay, betas (0.5, 0.999)."""
    return optax.chain(
        optax.add_decayed_weights(config.arch_weight_decay),
        optax.adam(config.arch_learning_rate, b1=0.5, b2=0.999),
    )


def search_network(config: SearchConfig, num_classes: int, *, train: bool) -> SearchNetwork:
    return SearchNetwork(
        num_classes=num_classes,
        init_channels=config.init_channels,
        layers=config.layers,
        steps=config.nodes,
        multiplier=config.nodes,
        primitives=tuple(config.primitives),
        train=train,
        mode="gdas" if config.single_path else "darts",
        fixed_reduction=config.fix_reduction,
    )


def cross_entropy(logits, labels):
    _check_labels(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels):
    _check_labels(logits, labels)
    return jnp.mean(jnp.argmax(logits, -1) == labels)


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


class Search:
    """A search algorithm (`config.algorithm`): its state, initialisation and jitted steps."""

    def __init__(self, config: SearchConfig, num_classes: int, steps_per_epoch: int, mesh=None):
        """`mesh`: a `jnas.sharding.data_mesh`; the default is the first device alone."""
        self.config = config
        self.mesh = data_mesh(1) if mesh is None else mesh
        self.model = search_network(config, num_classes, train=True)
        # A step differentiates the network 2-4 times. As an inlined jit, Flax's Python traces
        # it once per step and each derivative re-reads that jaxpr: it took the second-order
        # step's compilation from 343 to 282 s, with bit-equal metrics (bench/README.md).
        self._forward = jax.jit(self._network, inline=True)
        self.eval_model = search_network(config, num_classes, train=False)
        self.lr_schedule = epoch_cosine_schedule(config, steps_per_epoch)
        self.tau_schedule = tau_schedule(config, steps_per_epoch)
        self.w_tx = weight_optimizer(config, self.lr_schedule)
        self.alpha_tx = arch_optimizer(config)
        # Batches split over the data axis, everything else replicated (jnas.sharding).
        self.step = ShardedStep(self._step, self.mesh, batch_argnums=(1, 2))
        self.eval_step = ShardedStep(self._eval_step, self.mesh, batch_argnums=(1,))

    def init(self, key, sample_x) -> SearchState:
        """Weights from Flax's initialisers, alpha = 1e-3 * N(0, 1), replicated over the mesh.

        Computed on one local device: every process gets the same values from the same key.
        """
        k_w, k_alpha, k_path = jax.random.split(key, 3)
        alpha = self.model.init_alpha(k_alpha)
        init = functools.partial(self.model.init, key=k_path, tau=self.config.tau_max)
        variables = init_variables(init, k_w, sample_x, alpha)
        params, batch_stats = variables["params"], variables["batch_stats"]
        state = SearchState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            alpha=alpha,
            w_opt_state=self.w_tx.init(params),
            alpha_opt_state=self.alpha_tx.init(alpha),
        )
        return put_replicated(state, self.mesh)

    def _network(self, params, batch_stats, alpha, x, key, tau):
        logits, updates = self.model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            alpha,
            key=key,
            tau=tau,
            mutable=["batch_stats"],
        )
        return logits, updates["batch_stats"]

    def _step(self, state: SearchState, train_batch, val_batch, key):
        k_arch, k_w = jax.random.split(key)
        lr, tau = self.lr_schedule(state.step), self.tau_schedule(state.step)
        if self.config.algorithm == "gdas":
            state, train_loss, logits = self._weight_step(state, train_batch, k_w, tau)
            state, arch_loss = self._arch_step(state, train_batch, val_batch, k_arch, lr, tau)
        else:
            state, arch_loss = self._arch_step(state, train_batch, val_batch, k_arch, lr, tau)
            state, train_loss, logits = self._weight_step(state, train_batch, k_w, tau)
        metrics = {
            "train_loss": train_loss,
            "train_acc": accuracy(logits, train_batch["y"]),
            "arch_loss": arch_loss,
            "lr": lr,
        }
        if self.config.single_path:
            metrics["tau"] = tau
        return state._replace(step=state.step + 1), metrics

    def _arch_step(self, state: SearchState, train_batch, val_batch, key, lr, tau):
        cfg = self.config

        # Batch statistics, not running averages, normalise in training; the running averages
        # are updated by the weight step only. Under the Gumbel relaxation every loss of this
        # step sees the same sampled paths.
        def loss_fn(params, alpha, batch):
            logits, _ = self._forward(params, state.batch_stats, alpha, batch["x"], key, tau)
            return cross_entropy(logits, batch["y"])

        if cfg.algorithm == "milenas":
            arch_loss, dalpha = milenas_hypergrad(
                loss_fn, state.params, state.alpha, train_batch, val_batch, lam=cfg.lam
            )
        elif cfg.second_order:
            # xi = the current weight lr, with the weight optimizer's momentum buffer and
            # weight decay in the virtual step.
            arch_loss, dalpha = darts_hypergrad(
                loss_fn,
                state.params,
                state.alpha,
                train_batch,
                val_batch,
                lr=lr,
                momentum=cfg.momentum,
                momentum_buf=optax.tree_utils.tree_get(state.w_opt_state, "trace"),
                weight_decay=cfg.weight_decay,
                hessian=cfg.hessian,
            )
        else:  # DARTS first order and GDAS: grad_alpha L_val at the current weights
            arch_loss, dalpha = darts_hypergrad(
                loss_fn, state.params, state.alpha, train_batch, val_batch, lr=0.0
            )
        updates, alpha_opt_state = self.alpha_tx.update(dalpha, state.alpha_opt_state, state.alpha)
        alpha = optax.apply_updates(state.alpha, updates)
        return state._replace(alpha=alpha, alpha_opt_state=alpha_opt_state), arch_loss

    def _weight_step(self, state: SearchState, train_batch, key, tau):
        def weight_loss(params):
            logits, batch_stats = self._forward(
                params, state.batch_stats, state.alpha, train_batch["x"], key, tau
            )
            return cross_entropy(logits, train_batch["y"]), (logits, batch_stats)

        (train_loss, (logits, batch_stats)), grads = jax.value_and_grad(weight_loss, has_aux=True)(
            state.params
        )
        updates, w_opt_state = self.w_tx.update(grads, state.w_opt_state, state.params)
        new_state = state._replace(
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            w_opt_state=w_opt_state,
        )
        return new_state, train_loss, logits

    def _eval_step(self, state: SearchState, batch):
        """Sums over the real rows of a padded batch: (loss_sum, correct_sum, count)."""
        logits = self.eval_model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, batch["x"], state.alpha
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        correct = jnp.argmax(logits, -1) == batch["y"]
        mask = batch["mask"]
        return jnp.sum(losses * mask), jnp.sum(correct * mask), jnp.sum(mask)
