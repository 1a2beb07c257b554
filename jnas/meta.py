"""Few-shot meta-learning of weights and architectures: MAML, Auto-MAML and T-NAS.

One meta-iteration takes `meta_batch` N-way K-shot tasks; per task the learner adapts on the
support set with `maml_adapt` and is scored on the query set; the meta-gradient of the mean
query loss (`maml_meta_grad`, exact through the inner loop unless `first_order`) updates the
meta-parameters with Adam. Tasks are split over the devices of a mesh, like the search steps'
batches (`jnas.sharding`); each device takes its tasks `tasks_at_once` at a time (`jax.vmap`),
the groups in turn (`lax.map`).

- `maml` (Finn et al., 2017): the 4-block convolutional learner; only weights.
- `auto_maml` (Lian et al., 2020): the DARTS search network; alpha is meta-learned and shared
  by the tasks, only the weights adapt (alpha's inner rate is 0), yet alpha's meta-gradient
  runs through the weights' adaptation.
- `tnas` (Lian et al., 2020): weights and alpha both adapt per task, at their own rates.

BatchNorm normalises every set with its own statistics, in adaptation and in evaluation
(MAML's transductive batch norm), so there are no running averages in the state.

Evaluation on a task: MAML adapts for `inner_steps_test` steps. Auto-MAML and T-NAS derive a
discrete architecture (T-NAS first adapts alpha on the task's support set, Auto-MAML uses the
meta-alpha), then re-train that architecture from the meta-weights on the support set for
`inner_steps_test` steps, and score it on the query set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jnas.config import check_common, option
from jnas.episodes import FEWSHOT_DATASETS
from jnas.errors import JnasError
from jnas.genotype import PRIMITIVES
from jnas.ops import PatchConv, batch_norm, check_primitives, max_pool
from jnas.relax import make_relaxation
from jnas.sharding import ShardedStep, data_mesh, map_rows, put_replicated
from jnas.spaces import DartsSpace
from jnas.steps import accuracy, cross_entropy, init_variables
from jnas.transforms import maml_adapt, maml_meta_grad

ALGORITHMS = ("maml", "auto_maml", "tnas")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """One meta-training run. Defaults: T-NAS's Mini-ImageNet 5-way 1-shot setting (Lian et
    al., 2020), which takes MAML's (Finn et al., 2017) for the inner loop and the weights; the
    architecture's rates are DARTS's. `iterations` is MAML's 60,000."""

    algo: str = option("tnas", "maml: a fixed conv learner; auto_maml: one meta-learned "
                       "architecture; tnas: each task adapts its architecture",
                       choices=ALGORITHMS)
    dataset: str = option("mini_imagenet", "few-shot dataset", choices=FEWSHOT_DATASETS)
    data_dir: str | None = option(None, "folder of the data (see README)")
    way: int = option(5, "classes per task (N-way)")
    shot: int = option(1, "training images per class in a task (K-shot)")
    query: int = option(15, "query images per class in a task")
    meta_batch: int = option(4, "tasks per meta-iteration")
    inner_steps: int = option(5, "inner-loop steps in meta-training")
    inner_steps_test: int = option(10, "inner-loop steps at test time")
    inner_lr_w: float = option(0.01, "inner-loop learning rate of the weights")
    inner_lr_alpha: float = option(3e-3, "inner-loop learning rate of alpha (T-NAS)")
    meta_lr_w: float = option(1e-3, "meta learning rate (Adam) of the weights")
    meta_lr_alpha: float = option(3e-4, "meta learning rate (Adam) of alpha")
    iterations: int = option(60_000, "meta-iterations")
    first_order: bool = option(False, "first-order MAML (no second derivatives)")
    test_episodes: int = option(600, "test episodes of the final test")
    filters: int = option(64, "MAML's conv learner width")
    init_channels: int = option(16, "T-NAS's network: channels of the first cell, C")
    layers: int = option(2, "T-NAS's network: cells, alternating normal and reduction")
    nodes: int = option(4, "T-NAS's network: intermediate nodes per cell")
    primitives: tuple[str, ...] = option(PRIMITIVES, "comma-separated candidate operations")
    log_every: int = option(100, "meta-iterations per metrics line")
    checkpoint_every: int = option(1000, "meta-iterations per checkpoint")
    seed: int = option(0, "random seed: initialisation and training episodes")
    save: str = option("runs/tnas", "output folder; rerun to resume")
    devices: int | None = option(None, "devices per process to split the tasks over "
                                 "(default: all local devices)")
    tasks_at_once: int | None = option(None, "tasks a device adapts together (vmapped), the "
                                       "rest in turn; fewer hold less memory (default: 1 on "
                                       "CPU, where it was fastest; all elsewhere)")

    def __post_init__(self):
        check_common(self)
        if self.algo not in ALGORITHMS:
            raise JnasError(f"`algo` must be one of {', '.join(ALGORITHMS)}, got {self.algo!r}")
        positive = (
            "way", "shot", "query", "meta_batch", "iterations", "test_episodes", "filters",
            "init_channels", "layers", "nodes", "log_every", "checkpoint_every",
        )  # fmt: skip
        if self.tasks_at_once is not None:
            positive += ("tasks_at_once",)
        for name in positive:
            if getattr(self, name) <= 0:
                raise JnasError(f"`{name}` must be positive, got {getattr(self, name)}")
        for name in ("inner_steps", "inner_steps_test"):
            if getattr(self, name) < 0:
                raise JnasError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if self.checkpoint_every % self.log_every:
            raise JnasError(
                f"`checkpoint_every` {self.checkpoint_every} must be a multiple of `log_every` "
                f"{self.log_every}, so that a resumed run logs the same windows"
            )
        check_primitives(self.primitives)
        if self.searches_architecture:  # its layers, nodes and ops, before any data loads
            if self.layers < 2:
                raise JnasError(
                    f"`layers` {self.layers} has no reduction cell: T-NAS's network alternates "
                    "normal and reduction cells, so `layers` must be at least 2"
                )
            meta_space(self, (28, 28, 1))

    @property
    def searches_architecture(self) -> bool:
        return self.algo != "maml"


class MetaState(NamedTuple):
    step: jax.Array
    w: Any
    alpha: Any  # {} for MAML
    w_opt_state: Any
    alpha_opt_state: Any


class ConvLearner(nn.Module):
    """MAML's learner: 4 x (3x3 conv, `filters` channels -> BN -> ReLU -> 2x2 max pool,
    odd edges dropped) -> linear. 28x28 Omniglot ends at 1x1, 84x84 Mini-ImageNet at 5x5."""

    num_classes: int
    filters: int = 64
    blocks: int = 4

    @nn.compact
    def __call__(self, x):
        if min(x.shape[1:3]) < 2**self.blocks:
            raise JnasError(
                f"MAML's learner halves its images {self.blocks} times, so they must be at "
                f"least {2**self.blocks}x{2**self.blocks} pixels, got {x.shape[1]}x{x.shape[2]}"
            )
        for _ in range(self.blocks):
            # No bias: BN removes it, so its gradient is rounding noise, which Adam would
            # scale up to full-size steps.
            x = PatchConv(self.filters, 3)(x)
            # ReLU after the pooling, on a quarter of the pixels: the same function, as both
            # are monotone.
            x = nn.relu(max_pool(batch_norm(train=True, affine=True)(x), 2, 2, 0))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def meta_network(config: MetaConfig, image_shape: tuple[int, int, int]) -> nn.Module:
    """MAML's ConvLearner, or the T-NAS search network: DARTS cells alternating normal and
    reduction (a normal and a reduction cell by default), the stem striding large images
    down to about 28x28 (84x84 -> 28x28), the width of the paper's C=16."""
    if not config.searches_architecture:
        return ConvLearner(config.way, config.filters)
    return meta_space(config, image_shape).network(config.way, train=True)


def meta_space(config: MetaConfig, image_shape: tuple[int, int, int]) -> DartsSpace:
    return DartsSpace(
        primitives=tuple(config.primitives),
        init_channels=config.init_channels,
        layers=config.layers,
        nodes=config.nodes,
        reductions=tuple(range(1, config.layers, 2)),
        stem_stride=max(1, image_shape[0] // 28),
    )


class MetaLearner:
    """A meta-learning algorithm (`config.algo`): state, initialisation, jitted steps.

    `step(state, tasks) -> (state, metrics)` takes one meta-iteration on a batch of episodes
    (`jnas.episodes.EpisodeSampler.batch`); `eval_step(state, tasks) -> (losses, accuracies)`
    scores each episode after test-time adaptation. Tasks are split over the mesh.
    """

    def __init__(self, config: MetaConfig, image_shape: tuple[int, int, int], mesh=None):
        self.config = config
        self.image_shape = tuple(image_shape)
        self.mesh = data_mesh(1) if mesh is None else mesh
        self.model = meta_network(config, self.image_shape)
        # T-NAS relaxes alpha as DARTS does, and tests the architecture derived by its rule.
        self.space = meta_space(config, self.image_shape)
        self.relaxation = make_relaxation("darts", 1)
        self.w_tx = optax.adam(config.meta_lr_w)
        self.alpha_tx = optax.adam(config.meta_lr_alpha, b1=0.5, b2=0.999)
        cpu = jax.default_backend() == "cpu"
        self.tasks_at_once = config.tasks_at_once or (1 if cpu else config.meta_batch)
        self.step = ShardedStep(self._step, self.mesh, batch_argnums=(1,))
        self.eval_step = ShardedStep(self._eval_step, self.mesh, batch_argnums=(1,))

    def init(self, key) -> MetaState:
        """Flax's initialisers for w, 1e-3 * N(0, 1) for alpha, replicated over the mesh."""
        k_w, k_alpha = jax.random.split(key)
        x = jnp.zeros((2, *self.image_shape), jnp.float32)
        if self.config.searches_architecture:
            alpha = self.relaxation.init_alpha(k_alpha, self.space.alpha_shapes())
            weights = self.relaxation.op_weights(alpha)
            w = init_variables(self.model.init, k_w, x, weights)["params"]
        else:
            alpha = {}
            w = init_variables(self.model.init, k_w, x)["params"]
        state = MetaState(
            step=jnp.zeros((), jnp.int32),
            w=w,
            alpha=alpha,
            w_opt_state=self.w_tx.init(w),
            alpha_opt_state=self.alpha_tx.init(alpha),
        )
        return put_replicated(state, self.mesh)

    def loss(self, params, batch, edge_weights=None):
        """`(cross entropy, accuracy)` of `params` (w, or {"w", "alpha"}) on `(x, y)`;
        `edge_weights` replaces the relaxation's weights of alpha (the derived cells)."""
        x, y = batch
        if self.config.searches_architecture:
            if edge_weights is None:
                edge_weights = self.relaxation.op_weights(params["alpha"])
            args = (x, edge_weights)
            params = params["w"]
        else:
            args = (x,)
        # Batch statistics normalise; the running averages Flax would keep are dropped.
        logits, _ = self.model.apply({"params": params}, *args, mutable=["batch_stats"])
        return cross_entropy(logits, y), accuracy(logits, y)

    def meta_params(self, state: MetaState):
        if self.config.searches_architecture:
            return {"w": state.w, "alpha": state.alpha}
        return state.w

    def inner_lr(self):
        """The inner rates as a prefix of `meta_params`: Auto-MAML's alpha has a static 0."""
        cfg = self.config
        if cfg.algo == "maml":
            return cfg.inner_lr_w
        return {"w": cfg.inner_lr_w, "alpha": cfg.inner_lr_alpha if cfg.algo == "tnas" else 0.0}

    def meta_grad(self, params, tasks):
        """Per-task query losses and accuracies, and the meta-gradient averaged over tasks."""
        cfg = self.config

        def task_grad(params, task):
            (loss, acc), grads = maml_meta_grad(
                self.loss,
                params,
                (task["support_x"], task["support_y"]),
                (task["query_x"], task["query_y"]),
                inner_lr=self.inner_lr(),
                inner_steps=cfg.inner_steps,
                first_order=cfg.first_order,
                has_aux=True,
            )
            return loss, acc, grads

        losses, accs, grads = self.map_tasks(task_grad, params, tasks)
        return losses, accs, jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)

    def map_tasks(self, fn, shared, tasks):
        """`fn(shared, task)` for every task, each device its own, `tasks_at_once` at a time."""
        return map_rows(fn, shared, tasks, self.mesh, self.tasks_at_once)

    def _step(self, state: MetaState, tasks):
        cfg = self.config
        losses, accs, grads = self.meta_grad(self.meta_params(state), tasks)
        w_grads, alpha_grads = (
            (grads["w"], grads["alpha"]) if cfg.searches_architecture else (grads, {})
        )
        w_updates, w_opt_state = self.w_tx.update(w_grads, state.w_opt_state, state.w)
        a_updates, a_opt_state = self.alpha_tx.update(
            alpha_grads, state.alpha_opt_state, state.alpha
        )
        new_state = MetaState(
            step=state.step + 1,
            w=optax.apply_updates(state.w, w_updates),
            alpha=optax.apply_updates(state.alpha, a_updates),
            w_opt_state=w_opt_state,
            alpha_opt_state=a_opt_state,
        )
        return new_state, {"loss": jnp.mean(losses), "acc": jnp.mean(accs)}

    def task_alpha(self, state: MetaState, support):
        """The architecture a task gets: T-NAS adapts alpha (with w) on its support set for
        `inner_steps_test` steps; Auto-MAML's is the meta-alpha."""
        if self.config.algo != "tnas":
            return state.alpha
        adapted = maml_adapt(
            self.loss,
            self.meta_params(state),
            support,
            inner_lr=self.inner_lr(),
            inner_steps=self.config.inner_steps_test,
            has_aux=True,
        )
        return adapted["alpha"]

    def _eval_step(self, state: MetaState, tasks):
        cfg = self.config

        def score(state, task):
            support = (task["support_x"], task["support_y"])
            query = (task["query_x"], task["query_y"])
            if cfg.searches_architecture:
                alpha = self.task_alpha(state, support)
                derived = self.space.derived_weights(self.relaxation.op_weights(alpha))

                def loss(w, batch):
                    return self.loss({"w": w, "alpha": alpha}, batch, derived)
            else:
                loss = self.loss
            w = maml_adapt(
                loss,
                state.w,
                support,
                inner_lr=cfg.inner_lr_w,
                inner_steps=cfg.inner_steps_test,
                has_aux=True,
            )
            return loss(w, query)

        return self.map_tasks(score, state, tasks)
