"""Search steps: explicit state plus one jit-compiled step assembled from pieces.

`Search(config, ...)` composes a search space (`jnas.spaces`), a relaxation (`jnas.relax`)
and an algorithm (`jnas.algorithms`: an architecture gradient and the order of the
architecture and weight steps) with the weight and architecture optimizers into one step
`(state, train_batch, val_batch, key) -> (state, metrics)`. The step is jitted once with the
batches split over a device mesh and the rest replicated (`jnas.sharding`), so the same code
runs on one device or many with the same result. Batches are `{"x": float NHWC, "y": int}`.

Sampling relaxations draw per step: the architecture step and the weight step each their
own sample (per cell type and edge, shared by the batch), as GDAS's code samples on every
forward pass; every loss inside one architecture step sees the same sample.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jnas.algorithms import ALGORITHMS, ArchContext, algorithm
from jnas.config import check_common, check_sgd, option
from jnas.errors import JnasError
from jnas.relax import RELAXATIONS, Relaxation, make_relaxation
from jnas.sharding import ShardedStep, data_mesh, put_replicated
from jnas.spaces import SPACES, Space, space_class, space_from_config
from jnas.steps import accuracy, cross_entropy, init_variables, masked_sums
from jnas.transforms import hessian_eigenvalues


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """One search run. Defaults are the DARTS paper's CIFAR-10 search (Liu et al., 2019).

    `SearchConfig.published(algorithm, space)` gives each algorithm's published settings
    (GDAS: 240 epochs; SNAS: 150), on NAS-Bench-201 the benchmark's released configs.
    `relaxation` None is the algorithm's; `primitives` None is the space's candidate ops;
    `tau_max`/`tau_min` None are the relaxation's (GDAS 10 -> 0.1, SNAS 1 -> 0.03), as are
    `w01`/`op_threshold` (FairDARTS's 10 and 0.85). `lam` is
    MiLeNAS's weight of the validation loss; `second_order` and `hessian` are DARTS's;
    `candidates` and `candidate_batch_size` are RSPS's selection (`jnas.selection`).
    `init_channels`, `layers`, `nodes` and `fix_reduction` shape the DARTS space,
    `init_channels` and `cells_per_stage` the NAS-Bench-201 one.
    """

    algorithm: str = option("darts", "the search algorithm")
    space: str = option("darts", f"search space: {', '.join(SPACES)}")
    relaxation: str | None = option(
        None, "relaxation of alpha: " + ", ".join(RELAXATIONS) + " (default: the algorithm's)"
    )
    dataset: str = option("cifar10", "digits (bundled, no download), cifar10, cifar100 or a "
                          ".npz path")
    data_dir: str | None = option(None, "TFDS data_dir or folder of .npz files")
    batch_size: int = option(64, "images per step in each half (weights', architecture's)")
    learning_rate: float = option(0.025, "weights' SGD learning rate at the first epoch")
    learning_rate_min: float = option(0.001, "weights' learning rate at the last epoch (cosine)")
    momentum: float = option(0.9, "weights' SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum for the weights")
    weight_decay: float = option(3e-4, "weights' L2 weight decay")
    epochs: int = option(50, "search epochs")
    init_channels: int = option(16, "channels of the first cells, C")
    layers: int = option(8, "cells (DARTS space); reduction cells at 1/3 and 2/3 of them")
    nodes: int = option(4, "intermediate nodes per cell (DARTS space)")
    cells_per_stage: int = option(5, "cells per stage, N (NAS-Bench-201 space)")
    primitives: tuple[str, ...] | None = option(
        None, "comma-separated candidate operations (default: the space's)"
    )
    train_portion: float = option(0.5, "share of the training set that trains the weights; "
                                  "the rest is the architecture's validation set")
    arch_learning_rate: float = option(3e-4, "alpha's Adam learning rate")
    arch_weight_decay: float = option(1e-3, "alpha's weight decay")
    arch_beta1: float = option(0.5, "alpha's Adam beta1 (DARTS: 0.5; beta2 is 0.999)")
    grad_clip: float = option(5.0, "weights' gradient clipping by global norm (0: none)")
    second_order: bool = option(False, "DARTS's unrolled bilevel step")
    hessian: str = option("exact", "second order's Hessian-vector product",
                          choices=("exact", "finite_difference"))
    lam: float = option(1.0, "MiLeNAS's weight of the validation loss in alpha's gradient")
    tau_max: float | None = option(None, "first-epoch temperature (default: the relaxation's)")
    tau_min: float | None = option(None, "last-epoch temperature (default: the relaxation's)")
    prune_threshold: float | None = option(
        None, "ASAP: an op is pruned once its weight is under this share of 1/ops (default: "
        "the relaxation's, 0.4)"
    )
    w01: float | None = option(
        None, "FairDARTS's weight of the zero-one loss on sigmoid(alpha) (default: the "
        "relaxation's, 10)"
    )
    op_threshold: float | None = option(
        None, "FairDARTS's derivation: a kept edge's op weight must reach it (default: the "
        "relaxation's, 0.85)"
    )
    fix_reduction: bool = option(
        False, "GDAS's fixed reduction cell (FRC): search the normal cell only"
    )
    partial_channels: int = option(
        1, "PC-DARTS's K: 1/K of each edge's channels go through its ops (1: all)"
    )
    warmup_epochs: int = option(
        0, "epochs of weight steps alone before the architecture steps start (PC-DARTS: 15)"
    )
    track_hessian: bool = option(
        False, "log the dominant eigenvalue of the Hessian of the architecture's validation "
        "loss in alpha after every epoch (RobustDARTS), and plot it (hessian.png)"
    )
    early_stop: bool = option(
        False, "DARTS-ES (RobustDARTS): stop once the eigenvalue's local average grew by "
        "1/es_ratio over es_lag epochs, and keep the architecture of the earlier epoch; needs "
        "--track_hessian"
    )
    es_window: int = option(5, "DARTS-ES: epochs in the eigenvalue's centred local average")
    es_lag: int = option(5, "DARTS-ES: k, the epochs between the two compared averages")
    es_ratio: float = option(0.75, "DARTS-ES: stop when avg(i - k) / avg(i) falls below it")
    es_start_epoch: int = option(10, "DARTS-ES: the earliest epoch whose architecture it keeps")
    candidates: int = option(
        100, "RSPS: architectures drawn uniformly after each epoch and scored with the shared "
        "weights, each on its own validation batch; the best is the epoch's architecture"
    )
    candidate_batch_size: int = option(512, "RSPS: validation images that score a candidate")
    benchmark: str | None = option(
        None, "NAS-Bench-201: a NATS-Bench file or folder (pip install \"jnas[nats]\"), or a "
        "CSV with an arch column; every epoch's derived cell is looked up in it"
    )
    seed: int = option(2, "random seed: initialisation, data order, samples")
    save: str = option("runs/darts", "output folder; rerun to resume")
    devices: int | None = option(None, "devices per process to split each batch over "
                                 "(default: all local devices)")

    def __post_init__(self):
        check_common(self)
        check_sgd(self)
        if not 0 <= self.arch_beta1 < 1:
            raise JnasError(f"`arch_beta1` must lie in [0, 1), got {self.arch_beta1}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise JnasError(
                f"`warmup_epochs` must lie in [0, `epochs`) = [0, {self.epochs}), got "
                f"{self.warmup_epochs}: the architecture steps start after the warm-up"
            )
        if self.early_stop and not self.track_hessian:
            raise JnasError("`early_stop` (DARTS-ES) reads the Hessian's eigenvalues: pass "
                            "`track_hessian` too")
        for name in ("es_window", "es_lag", "es_start_epoch"):
            if getattr(self, name) < 1:
                raise JnasError(f"`{name}` must be positive, got {getattr(self, name)}")
        if not 0 < self.es_ratio < 1:
            raise JnasError(f"`es_ratio` must lie in (0, 1), got {self.es_ratio}")
        if self.hessian not in ("exact", "finite_difference"):
            raise JnasError(f"`hessian` must be exact or finite_difference, got {self.hessian!r}")
        algo = algorithm(self.algorithm)
        for name in ("candidates", "candidate_batch_size"):
            if getattr(self, name) < 1:
                raise JnasError(f"`{name}` must be positive, got {getattr(self, name)}")
        if not trains_alpha(algo):
            for name in ALPHA_SETTINGS:
                if getattr(self, name) != _CONFIG_DEFAULTS[name]:
                    raise JnasError(f"`{name}` is a setting of alpha's training; "
                                    f"{self.algorithm} trains no alpha: leave it unset")
        # An option of another algorithm (its default means "unused") is not ignored.
        for name in sorted({o for a in ALGORITHMS.values() for o in a.options}):
            if getattr(self, name) != _CONFIG_DEFAULTS[name] and name not in algo.options:
                takers = [a.name for a in ALGORITHMS.values() if name in a.options]
                raise JnasError(
                    f"`{name}` is an option of {', '.join(takers)}; {self.algorithm} has none"
                )
        search_space(self)
        search_relaxation(self)

    @classmethod
    def published(cls, algorithm_name: str = "darts", space: str = "darts", **overrides):
        """The published settings of `algorithm_name` on `space`, then `overrides`."""
        defaults = {
            **algorithm(algorithm_name).defaults,
            **space_class(space).search_settings(algorithm_name),
        }
        return cls(algorithm=algorithm_name, space=space, **{**defaults, **overrides})


_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
# The settings that only a search which updates alpha reads.
ALPHA_SETTINGS = ("arch_learning_rate", "arch_weight_decay", "arch_beta1", "warmup_epochs",
                  "track_hessian", "early_stop")


def trains_alpha(algo) -> bool:
    """Whether the algorithm's steps update alpha (an "arch" or "joint" phase). One that does
    not (RSPS) has nothing to derive from alpha: its architecture is selected by scoring
    sampled ones with the shared weights (`jnas.selection`)."""
    return bool({"arch", "joint"} & set(algo.order))


def search_space(config: SearchConfig) -> Space:
    """The config's space, built from the config fields that it has."""
    return space_from_config(config, config.space, _CONFIG_DEFAULTS)


def relaxation_options() -> tuple[str, ...]:
    """The SearchConfig fields that are some relaxation's parameters."""
    fields = {f.name for c in RELAXATIONS.values() for f in dataclasses.fields(c)}
    return tuple(sorted(fields - {"epochs", "incoming", "space"}))  # the space's, not settings


def search_relaxation(config: SearchConfig) -> Relaxation:
    """The config's relaxation for its space's cells, with its parameters from the config
    (None: the relaxation's default)."""
    name = config.relaxation or algorithm(config.algorithm).relaxation
    params = {f: getattr(config, f) for f in relaxation_options()}
    space = search_space(config)
    relaxation = make_relaxation(name, config.epochs, incoming=space.incoming(), **params)
    # A sampler of discrete cells (RSPS's uniform one) builds them by the space's rules.
    if "space" in {f.name for f in dataclasses.fields(relaxation)}:
        relaxation = dataclasses.replace(relaxation, space=space)
    return relaxation


class SearchState(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any
    alpha: Any
    w_opt_state: Any
    alpha_opt_state: Any
    relax_state: Any  # the relaxation's own arrays ({} for most; ASAP: its unpruned ops)


def cosine_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """PyTorch's CosineAnnealingLR from `config.learning_rate` to `config.learning_rate_min`
    over `config.epochs`, stepped once per epoch (constant within an epoch), as the DARTS and
    NAS-Bench-201 code step it; `config` is a search's or an evaluation's.

    optax's `alpha` is a fraction of the initial value, hence min/initial.
    """
    per_epoch = optax.cosine_decay_schedule(
        config.learning_rate, config.epochs, alpha=config.learning_rate_min / config.learning_rate
    )
    return lambda count: per_epoch(count // steps_per_epoch)


def weight_optimizer(config, schedule: optax.Schedule):
    """PyTorch SGD with coupled weight decay after gradient-norm clipping (`grad_clip` 0: no
    clipping); `config` is any config with these fields (a search's, an evaluation's)."""
    clip = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
    return optax.chain(
        *clip,
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
    )


def arch_optimizer(config: SearchConfig):
    """PyTorch Adam with coupled weight decay, betas (`arch_beta1`, 0.999), then the
    algorithm's own transform of the updates, if any (ProxylessNAS's rescaling)."""
    own = algorithm(config.algorithm).arch_transform
    return optax.chain(
        optax.add_decayed_weights(config.arch_weight_decay),
        optax.adam(config.arch_learning_rate, b1=config.arch_beta1, b2=0.999),
        *([own()] if own else []),
    )


class Search:
    """A search (`config`: space, relaxation, algorithm): its state, initialisation, steps."""

    def __init__(self, config: SearchConfig, num_classes: int, steps_per_epoch: int, mesh=None):
        """`mesh`: a `jnas.sharding.data_mesh`; the default is the first device alone."""
        self.config = config
        self.mesh = data_mesh(1) if mesh is None else mesh
        self.space = search_space(config)
        self.relaxation = search_relaxation(config)
        self.algorithm = algorithm(config.algorithm)
        self.steps_per_epoch = steps_per_epoch
        self.model = self.space.network(num_classes, train=True)
        self.eval_model = self.space.network(num_classes, train=False)
        # A step differentiates the network 2-4 times. As an inlined jit, Flax's Python traces
        # it once per step and each derivative re-reads that jaxpr: it took the second-order
        # step's compilation from 343 to 282 s, with bit-equal metrics (bench/README.md).
        self._forward = jax.jit(self._network, inline=True)
        self.lr_schedule = cosine_schedule(config, steps_per_epoch)
        self.w_tx = weight_optimizer(config, self.lr_schedule)
        self.alpha_tx = arch_optimizer(config)
        self._phases = {"arch": self._arch_step, "weights": self._weight_step,
                        "joint": self._joint_step}
        # Batches split over the data axis, everything else replicated (jnas.sharding).
        self.step = ShardedStep(self._step, self.mesh, batch_argnums=(1, 2))
        self.eval_step = ShardedStep(self._eval_step, self.mesh, batch_argnums=(1,))
        self.hessian_step = ShardedStep(self._hessian, self.mesh, batch_argnums=(1,))

    def init(self, key, sample_x) -> SearchState:
        """Weights from Flax's initialisers, alpha from the relaxation (DARTS's 1e-3 * N(0, 1)),
        replicated over the mesh.

        Computed on one local device: every process gets the same values from the same key.
        """
        k_w, k_alpha, k_path = jax.random.split(key, 3)
        alpha = self.relaxation.init_alpha(k_alpha, self.space.alpha_shapes())
        relax_state = self.relaxation.init_state(alpha)
        weights, index = self.relaxation.train_weights({**alpha, **relax_state}, k_path, 0)
        variables = init_variables(self.model.init, k_w, sample_x, weights, index)
        params, batch_stats = variables["params"], variables["batch_stats"]
        state = SearchState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            alpha=alpha,
            w_opt_state=self.w_tx.init(params),
            alpha_opt_state=self.alpha_tx.init(alpha),
            relax_state=relax_state,
        )
        return put_replicated(state, self.mesh)

    @staticmethod
    def relaxed(state: SearchState, alpha=None):
        """What the relaxation reads: alpha (the state's, or `alpha` being differentiated) and
        the relaxation's own state."""
        return {**(state.alpha if alpha is None else alpha), **state.relax_state}

    def derive(self, alpha):
        """The discrete architecture of `alpha` by the relaxation's (or the space's) rule."""
        return self.space.derive(self.relaxation.op_weights(alpha),
                                 self.relaxation.derivation_rule(self.space.derivation))

    def _network(self, params, batch_stats, weights, index, x):
        logits, updates = self.model.apply(
            {"params": params, "batch_stats": batch_stats}, x, weights, index,
            mutable=["batch_stats"],
        )
        return logits, updates["batch_stats"]

    def _loss(self, params, batch_stats, alpha, batch, key, epoch, sample=None):
        """The train-mode loss under the relaxation's sample from `key`: `sample` is the
        relaxation's sampler (default: the weight step's, `train_weights`)."""
        weights, index = (sample or self.relaxation.train_weights)(alpha, key, epoch)
        logits, batch_stats = self._forward(params, batch_stats, weights, index, batch["x"])
        return cross_entropy(logits, batch["y"]), (logits, batch_stats)

    def _step(self, state: SearchState, train_batch, val_batch, key):
        keys = dict(zip(("arch", "weights"), jax.random.split(key), strict=True))
        epoch = state.step // self.steps_per_epoch
        lr = self.lr_schedule(state.step)
        metrics = {}
        for phase in self.algorithm.order:
            args = (train_batch, val_batch, keys, lr, epoch)
            if phase == "arch" and self.config.warmup_epochs:
                # A conditional on a replicated scalar runs one branch: warm-up steps cost a
                # weight step only.
                state, m = jax.lax.cond(epoch >= self.config.warmup_epochs, self._arch_step,
                                        self._no_arch_step, state, *args)
            else:
                state, m = self._phases[phase](state, *args)
            metrics.update(m)
        state = state._replace(
            relax_state=self.relaxation.update_state(self.relaxed(state), epoch)
        )
        metrics = {
            # An order without an architecture phase (RSPS) has no arch_loss.
            **{k: metrics[k] for k in ("train_loss", "train_acc", "arch_loss") if k in metrics},
            "lr": lr,
            **self.relaxation.metrics(self.relaxed(state), epoch),
        }
        return state._replace(step=state.step + 1), metrics

    def _update_alpha(self, state: SearchState, dalpha):
        updates, alpha_opt_state = self.alpha_tx.update(dalpha, state.alpha_opt_state, state.alpha)
        alpha = optax.apply_updates(state.alpha, updates)
        return state._replace(alpha=alpha, alpha_opt_state=alpha_opt_state)

    def _update_weights(self, state: SearchState, grads, batch_stats):
        updates, w_opt_state = self.w_tx.update(grads, state.w_opt_state, state.params)
        return state._replace(
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            w_opt_state=w_opt_state,
        )

    def _arch_step(self, state: SearchState, train_batch, val_batch, keys, lr, epoch):
        # Batch statistics, not running averages, normalise in training; the running averages
        # are updated by weight steps only.
        def loss_fn(params, alpha, batch):
            return self._loss(params, state.batch_stats, self.relaxed(state, alpha), batch,
                              keys["arch"], epoch, self.relaxation.arch_weights)[0]

        ctx = ArchContext(state, train_batch, val_batch, lr, self.config)
        arch_loss, dalpha = self.algorithm.arch_gradient(loss_fn, ctx)
        extra, dextra = jax.value_and_grad(self.relaxation.loss)(state.alpha)
        dalpha = jax.tree.map(jnp.add, dalpha, dextra)
        return self._update_alpha(state, dalpha), {"arch_loss": arch_loss + extra}

    def _no_arch_step(self, state: SearchState, *args):
        """A warm-up epoch's architecture step: none (its logged loss is 0)."""
        del args
        return state, {"arch_loss": jnp.zeros((), jax.tree.leaves(state.params)[0].dtype)}

    def _weight_step(self, state: SearchState, train_batch, val_batch, keys, lr, epoch):
        (train_loss, (logits, batch_stats)), grads = jax.value_and_grad(
            self._loss, has_aux=True
        )(state.params, state.batch_stats, self.relaxed(state), train_batch, keys["weights"],
          epoch)
        state = self._update_weights(state, grads, batch_stats)
        return state, {"train_loss": train_loss, "train_acc": accuracy(logits, train_batch["y"])}

    def _joint_step(self, state: SearchState, train_batch, val_batch, keys, lr, epoch):
        """One loss on the train batch, its gradients update the weights and alpha."""

        def loss_fn(params, alpha):
            loss, aux = self._loss(params, state.batch_stats, self.relaxed(state, alpha),
                                   train_batch, keys["weights"], epoch)
            return loss + self.relaxation.loss(alpha), (loss, aux)

        (total, (train_loss, (logits, batch_stats))), (grads, dalpha) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True
        )(state.params, state.alpha)
        state = self._update_alpha(self._update_weights(state, grads, batch_stats), dalpha)
        return state, {
            "train_loss": train_loss,
            "train_acc": accuracy(logits, train_batch["y"]),
            "arch_loss": total,
        }

    def _hessian(self, state: SearchState, batch, key):
        """The dominant eigenvalue of the Hessian in alpha of the architecture's objective on
        `batch`, at the end of the epoch just run: the validation loss under the architecture
        step's sample, train-mode BatchNorm, plus the relaxation's loss and alpha's weight
        decay (RobustDARTS's analyze.py L122-124 and L174: `H + 1e-3 I`)."""
        epoch = (state.step - 1) // self.steps_per_epoch

        def loss_fn(params, alpha, batch):
            loss = self._loss(params, state.batch_stats, self.relaxed(state, alpha), batch, key,
                              epoch, self.relaxation.arch_weights)[0]
            decay = sum(jnp.sum(a**2) for a in jax.tree.leaves(alpha))
            return loss + self.relaxation.loss(alpha) + 0.5 * self.config.arch_weight_decay * decay

        return hessian_eigenvalues(loss_fn, state.params, state.alpha, batch)[0]

    def _eval_step(self, state: SearchState, batch):
        """Sums over the real rows of a padded batch: (loss_sum, correct_sum, count)."""
        weights, index = self.relaxation.eval_weights(self.relaxed(state))
        logits = self.eval_model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, batch["x"], weights, index
        )
        return masked_sums(logits, batch)
