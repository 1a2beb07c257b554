"""ENAS (Pham et al., ICML 2018): an LSTM controller (`jnas.controller`) trained by REINFORCE
on the validation accuracy of the children it samples, all children sharing the supernet's
weights.

Each epoch (a unit of the run loop, `jnas.loop`) has two phases, as ENAS's code alternates
them (melodyguan/enas 4bcfd73, src/cifar10/main.py L245-306):

(a) the shared weights: one child per step sampled from the controller (M = 1), trained by
    SGD on a batch of the training half, only its path computed (`_weight_step`);
(b) after every `controller_train_every`-th epoch, `controller_train_steps` controller updates,
    each on `controller_num_aggregate` sampled children scored with the shared weights on a
    validation batch of their own: reward = accuracy, `jnas.reinforce_grad` with the moving-
    average baseline and the entropy bonus, then Adam (`controller_update`).

At the end `derive_samples` children are sampled from the controller and scored with the
shared weights, each on a validation batch; the best is the result (ENAS paper §2.2 and
main.py L308-327, which samples 10; NAS-Bench-201's ENAS.py L203-228 and L496-508, 100). Scores
use batch statistics (`jnas.selection`), as ENAS's reward does (micro_child.py L804,
`is_training=True`).

Defaults (`EnasConfig`; on NAS-Bench-201 `EnasConfig.published("nas-bench-201")`), with
their sources:

- ENAS, scripts/cifar10_micro_search.sh: 150 epochs of batch 160, weights' learning rate 0.05
  to 0.0005 by cosine with warm restarts every 10 epochs, periods doubling (L11-12, L23-27),
  L2 1e-4 (L18; src/utils.py L118-123 adds `l2 * sum(w^2)` to the loss: a coupled weight
  decay of 2e-4), Nesterov momentum 0.9 (main.py L137, utils.py L212-214), gradient clipping
  5 (main.py L54; ENAS clips each tensor's norm, jnas the global norm); 5,000 of CIFAR-10's
  50,000 training images validate (data_utils.py L33-56: `train_portion` 0.9). Controller:
  Adam 0.0035 with beta1 0 and epsilon 1e-3 (L35; utils.py L217-219), no clipping, baseline
  decay 0.99 (main.py L72), entropy weight 1e-4 (L30), 30 updates of 10 children after every
  epoch (L31-34), an LSTM of 64 units with tanh constant 1.10 and op reduce 2.5 (main.py
  L153, L36-37).
- NAS-Bench-201 (D-X-Y/AutoDL-Projects f46486e, configs/nas-benchmark/algos/ENAS.config and
  scripts-search/NAS-Bench-201-algos/ENAS.sh): 250 epochs of batch 128, 0.05 to 0.0005 by
  cosine, weight decay 2.5e-4, Nesterov; controller Adam 1e-3, betas (0, 0.999), epsilon
  1e-3, gradient clipping 5 (ENAS.py L169), baseline decay 0.99, entropy weight 1e-4, 50
  updates of 20 children, 100 children derived, half of the training set validates; its
  controller has 32 units, tanh constant 2.5 and temperature 5
  (models/cell_searchs/search_model_enas_utils.py L13-20).

Where jnas differs: `jnas.reinforce_grad` differentiates the entropy bonus where ENAS adds
it to the reward, and subtracts the baseline of the earlier rewards where ENAS first updates
it with the current one (see its docstring); a controller update averages its K children's
gradients and then moves the baseline once by their mean reward (ENAS moves it per child);
optax's Adam puts epsilon after the bias correction (PyTorch's, as NAS-Bench-201; TensorFlow's
is before it); children are scored on unaugmented validation images (ENAS's reward too,
micro_child.py L781-802; NAS-Bench-201's ENAS.py L281-284 augments them); NAS-Bench-201's
ENAS.config sets the cosine's period to 10 epochs (T_max 10: the rate falls and rises again
every 20), jnas runs one cosine over the run there; the controller's LSTM has one layer
(`jnas.controller`, where its other differences are listed).
On the DARTS space the network is DARTS's supernet at the space's settings (8 cells, C=16, 4
nodes), not ENAS's own (6 x 3 + 2 layers of 5-node cells, 20 filters, auxiliary head, drop
path).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnas import data as jdata
from jnas import loop
from jnas.benchmark import PREFIX, Benchmark
from jnas.config import check_common, check_sgd, option
from jnas.controller import Controller
from jnas.errors import JnasError
from jnas.io import write_json
from jnas.plotting import plot_curves
from jnas.sampling import architecture, supernet_inputs, to_ops, uniform_actions
from jnas.search import cosine_schedule, weight_optimizer
from jnas.selection import Selection, check_batch_size, chunk_size
from jnas.sharding import (
    ShardedStep,
    data_mesh,
    is_main_process,
    local_rows,
    put_batch,
    put_replicated,
)
from jnas.spaces import SPACES, Space, space_class, space_from_config
from jnas.steps import accuracy, cross_entropy, init_variables
from jnas.transforms import reinforce_grad


@dataclasses.dataclass(frozen=True)
class EnasConfig:
    """One ENAS search. Defaults are ENAS's CIFAR-10 micro search (module docstring);
    `EnasConfig.published(space)` gives a space's (NAS-Bench-201's released settings)."""

    space: str = option("darts", "search space", choices=tuple(SPACES))
    dataset: str = option("cifar10", "digits (bundled, no download), cifar10, cifar100 or a "
                          ".npz path")
    data_dir: str | None = option(None, "TFDS data_dir or folder of .npz files")
    batch_size: int = option(160, "images per weight step, and per child's validation batch")
    learning_rate: float = option(0.05, "weights' SGD learning rate at the start of a cycle")
    learning_rate_min: float = option(0.0005, "weights' learning rate at the end of a cycle")
    restart_epochs: int = option(10, "epochs of the first cosine cycle, each later one "
                                 "`restart_mult` times longer (SGDR); 0: one cosine over the run")
    restart_mult: int = option(2, "growth of the cosine cycles")
    momentum: float = option(0.9, "weights' SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum for the weights")
    weight_decay: float = option(2e-4, "weights' L2 weight decay (coupled, as PyTorch's SGD)")
    grad_clip: float = option(5.0, "weights' gradient clipping by global norm (0: none)")
    epochs: int = option(150, "search epochs")
    train_portion: float = option(0.9, "share of the training set that trains the weights; "
                                  "the rest scores the children")
    init_channels: int = option(16, "channels of the first cells, C")
    layers: int = option(8, "cells (DARTS space); reduction cells at 1/3 and 2/3 of them")
    nodes: int = option(4, "intermediate nodes per cell (DARTS space)")
    cells_per_stage: int = option(5, "cells per stage, N (NAS-Bench-201 space)")
    primitives: tuple[str, ...] | None = option(
        None, "comma-separated candidate operations (default: the space's)"
    )
    lstm_size: int = option(64, "the controller's LSTM units")
    temperature: float | None = option(None, "the controller's logits divided by it "
                                       "(default: none)")
    tanh_constant: float | None = option(1.10, "the controller's logits bounded to c * tanh")
    op_tanh_reduce: float = option(2.5, "op decisions' tanh constant divided by it")
    controller_lr: float = option(0.0035, "the controller's Adam learning rate")
    controller_beta1: float = option(0.0, "the controller's Adam beta1 (beta2 is 0.999)")
    controller_eps: float = option(1e-3, "the controller's Adam epsilon")
    controller_grad_clip: float = option(0.0, "the controller's gradient clipping by global "
                                         "norm (0: none)")
    baseline_decay: float = option(0.99, "decay of the reward's moving-average baseline")
    entropy_weight: float = option(1e-4, "weight of the controller's entropy bonus")
    controller_train_every: int = option(1, "train the controller after every this many "
                                         "epochs")
    controller_train_steps: int = option(30, "controller updates per training phase")
    controller_num_aggregate: int = option(10, "children sampled and scored per controller "
                                           "update")
    derive_samples: int = option(10, "children sampled and scored at the end; the best is the "
                                 "result")
    benchmark: str | None = option(
        None, "NAS-Bench-201: a NATS-Bench file or folder (pip install \"jnas[nats]\"), or a "
        "CSV with an arch column; the greedy and the derived cells are looked up in it"
    )
    seed: int = option(0, "random seed: initialisation, data order, samples")
    save: str = option("runs/enas", "output folder; rerun to resume")
    devices: int | None = option(None, "devices per process to split each batch over "
                                 "(default: all local devices)")

    def __post_init__(self):
        check_common(self)
        check_sgd(self)
        for name in ("controller_lr", "controller_eps"):
            if getattr(self, name) <= 0:
                raise JnasError(f"`{name}` must be positive, got {getattr(self, name)}")
        for name in ("controller_train_every", "controller_train_steps",
                     "controller_num_aggregate", "derive_samples", "restart_mult"):
            if getattr(self, name) < 1:
                raise JnasError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        for name in ("restart_epochs", "weight_decay", "entropy_weight",
                     "controller_grad_clip"):
            if getattr(self, name) < 0:
                raise JnasError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.controller_beta1 < 1:
            raise JnasError(f"`controller_beta1` must lie in [0, 1), got "
                            f"{self.controller_beta1}")
        if not 0 <= self.baseline_decay <= 1:
            raise JnasError(f"`baseline_decay` must lie in [0, 1], got {self.baseline_decay}")
        self.controller()  # the space, and the controller's settings

    @classmethod
    def published(cls, space: str = "darts", **overrides):
        """The published settings of ENAS on `space` (ENAS's own where the space has none),
        then `overrides`."""
        space_class(space)
        return cls(space=space, **{**PUBLISHED.get(space, {}), **overrides})

    def search_space(self) -> Space:
        return space_from_config(self, self.space, _CONFIG_DEFAULTS)

    def controller(self) -> Controller:
        return Controller(self.search_space(), lstm_size=self.lstm_size,
                          temperature=self.temperature, tanh_constant=self.tanh_constant,
                          op_tanh_reduce=self.op_tanh_reduce)


_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EnasConfig)}
# NAS-Bench-201's ENAS (module docstring).
PUBLISHED = {
    "nas-bench-201": dict(
        epochs=250, batch_size=128, learning_rate=0.05, learning_rate_min=0.0005,
        restart_epochs=0, weight_decay=2.5e-4, train_portion=0.5, lstm_size=32,
        temperature=5.0, tanh_constant=2.5, op_tanh_reduce=1.0, controller_lr=1e-3,
        controller_grad_clip=5.0, controller_train_steps=50, controller_num_aggregate=20,
        derive_samples=100,
    ),
}


def weight_schedule(config: EnasConfig, steps_per_epoch: int) -> optax.Schedule:
    """ENAS's cosine with warm restarts, stepped per epoch (src/utils.py L154-183): within a
    cycle of T epochs, `lr_min + (lr_max - lr_min) (1 + cos(pi t / T)) / 2` at its t-th epoch;
    the first cycle has `restart_epochs`, each next one `restart_mult` times more.
    `restart_epochs` 0 is one cycle over the run, `jnas.search.cosine_schedule`."""
    if not config.restart_epochs:
        return cosine_schedule(config, steps_per_epoch)
    rates, length = [], config.restart_epochs
    while len(rates) < config.epochs:
        t = np.arange(length)
        rates.extend(config.learning_rate_min + (config.learning_rate - config.learning_rate_min)
                     * (1 + np.cos(np.pi * t / length)) / 2)
        length *= config.restart_mult
    table = jnp.asarray(rates[: config.epochs], jnp.float32)
    return lambda count: table[jnp.minimum(count // steps_per_epoch, config.epochs - 1)]


def controller_optimizer(config: EnasConfig) -> optax.GradientTransformation:
    """Adam (`controller_lr`, betas (`controller_beta1`, 0.999), `controller_eps`), after
    clipping by global norm when `controller_grad_clip` is set."""
    clip = [optax.clip_by_global_norm(config.controller_grad_clip)] * (
        config.controller_grad_clip > 0)
    return optax.chain(*clip, optax.adam(config.controller_lr, b1=config.controller_beta1,
                                         b2=0.999, eps=config.controller_eps))


def controller_update(controller: Controller, tx, theta, opt_state, baseline, actions, rewards,
                      *, baseline_decay: float, entropy_weight: float):
    """One REINFORCE update of the controller's parameters `theta` from K architectures it
    sampled, `actions` (K, D), and their `rewards` (K,): `jnas.reinforce_grad` with the
    moving-average `baseline`, then `tx`. Returns (theta, opt_state, baseline, metrics: the
    mean reward, the mean entropy along the samples, the loss)."""
    loss, grads, new_baseline = reinforce_grad(controller.log_prob, theta, actions, rewards,
                                               baseline, baseline_decay=baseline_decay,
                                               entropy_weight=entropy_weight)
    entropy = jax.vmap(controller.log_prob, in_axes=(None, 0))(theta, actions)[1]
    updates, opt_state = tx.update(grads, opt_state, theta)
    metrics = {"reward": jnp.mean(rewards), "entropy": jnp.mean(entropy),
               "controller_loss": loss}
    return optax.apply_updates(theta, updates), opt_state, new_baseline, metrics


class EnasState(NamedTuple):
    step: jax.Array  # weight steps so far
    params: Any
    batch_stats: Any
    w_opt_state: Any
    controller: Any  # the controller's parameters
    controller_opt_state: Any
    baseline: jax.Array
    controller_steps: jax.Array


class Enas:
    """ENAS's state, initialisation and compiled steps for `config`."""

    def __init__(self, config: EnasConfig, num_classes: int, steps_per_epoch: int, mesh=None):
        self.config = config
        self.mesh = data_mesh(1) if mesh is None else mesh
        self.space = config.search_space()
        self.controller = config.controller()
        self.model = self.space.network(num_classes, train=True)
        self.steps_per_epoch = steps_per_epoch
        self.lr_schedule = weight_schedule(config, steps_per_epoch)
        self.w_tx = weight_optimizer(config, self.lr_schedule)
        self.c_tx = controller_optimizer(config)
        self.weight_step = ShardedStep(self._weight_step, self.mesh, batch_argnums=(1,))
        self.controller_step = ShardedStep(self._controller_step, self.mesh)
        self._greedy = jax.jit(self.controller.greedy)
        # The children of a controller update and those derived at the end are sampled and
        # scored by one program.
        self.selection = Selection(
            self.space, self.model, self.mesh,
            lambda theta, key: self.controller.sample(theta, key)[0],
            chunk_size(config.controller_num_aggregate, config.derive_samples),
            config.batch_size)

    def init(self, key, sample_x) -> EnasState:
        """Flax's initialisers for the weights (every op, whatever the first child),
        ENAS's U(-0.1, 0.1) for the controller, a baseline of 0 (micro_controller.py L241);
        replicated over the mesh."""
        k_w, k_c, k_child = jax.random.split(key, 3)
        # Compiled: run op by op, the LSTM's many small ops cost seconds.
        theta = jax.jit(self.controller.init)(k_c)
        weights, index = jax.jit(self._child)(theta, k_child)
        variables = init_variables(self.model.init, k_w, sample_x, weights, index)
        params = variables["params"]
        state = EnasState(
            step=jnp.zeros((), jnp.int32), params=params,
            batch_stats=variables["batch_stats"], w_opt_state=self.w_tx.init(params),
            controller=theta, controller_opt_state=self.c_tx.init(theta),
            baseline=jnp.zeros((), jnp.float32), controller_steps=jnp.zeros((), jnp.int32),
        )
        return put_replicated(state, self.mesh)

    def _child(self, theta, key):
        """The supernet inputs of one child sampled from the controller."""
        ops = to_ops(self.space, self.controller.sample(theta, key)[0])
        return supernet_inputs(ops, len(self.space.primitives))

    def _weight_step(self, state: EnasState, batch, key):
        """SGD on one child sampled from `key` (only its path is computed): (state, metrics)."""
        weights, index = self._child(state.controller, key)

        def loss_fn(params):
            logits, updates = self.model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["x"], weights,
                index, mutable=["batch_stats"])
            return cross_entropy(logits, batch["y"]), (logits, updates["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, w_opt_state = self.w_tx.update(grads, state.w_opt_state, state.params)
        metrics = {"train_loss": loss, "train_acc": accuracy(logits, batch["y"]),
                   "lr": self.lr_schedule(state.step)}
        return state._replace(step=state.step + 1, params=optax.apply_updates(state.params,
                                                                              updates),
                              batch_stats=batch_stats, w_opt_state=w_opt_state), metrics

    def _controller_step(self, state: EnasState, actions, rewards):
        """The controller's update from its children `actions` and their `rewards` (their
        validation accuracies, `selection.score`): (state, metrics)."""
        cfg = self.config
        theta, opt_state, baseline, metrics = controller_update(
            self.controller, self.c_tx, state.controller, state.controller_opt_state,
            state.baseline, actions, rewards, baseline_decay=cfg.baseline_decay,
            entropy_weight=cfg.entropy_weight)
        state = state._replace(controller=theta, controller_opt_state=opt_state,
                               baseline=baseline, controller_steps=state.controller_steps + 1)
        return state, metrics

    def greedy(self, state: EnasState):
        """The controller's most likely architecture (each decision's argmax in turn)."""
        actions = jax.device_get(self._greedy(state.controller))
        return architecture(self.space, jax.device_get(to_ops(self.space, actions)))


class EnasJob:
    """An ENAS search as a job of the run loop: per epoch the weight steps, each the last of
    an epoch followed by the controller's training phase when one is due."""

    unit = "epoch"
    step_name = "shared-weight step"
    loss_key = "train_loss"
    may_differ = loop.RUN_FIELDS
    hint = "Lower `learning_rate`, or check the data for NaNs."

    def __init__(self, config: EnasConfig):
        self.config = config
        dataset = jdata.load_dataset(config.dataset, config.data_dir, split="train")
        self.dataset = dataset
        self.train_split, self.valid_split = jdata.search_split(dataset, config.train_portion)
        self.steps_per_epoch = jdata.num_train_batches(self.train_split, config.batch_size)
        check_batch_size(self.valid_split, config.batch_size, "batch_size")
        self.mesh = data_mesh(config.devices)
        self.mine = local_rows(self.mesh, config.batch_size)
        self.enas = Enas(config, dataset.num_classes, self.steps_per_epoch, self.mesh)
        self.steps = (self.enas.weight_step, self.enas.controller_step,
                      self.enas.selection.step)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.init_key, self.step_key = jax.random.split(jax.random.key(config.seed))
        self.controller_key = jax.random.fold_in(self.init_key, 1)
        self.benchmark = Benchmark.load(config.benchmark) if config.benchmark else None
        if self.benchmark is not None:  # an unsupported space fails now, not after an epoch
            space = self.enas.space
            space.benchmark_key(architecture(space, jax.device_get(to_ops(
                space, uniform_actions(space, self.init_key)))))
        self.phase = {}

    def init(self):
        return self.enas.init(self.init_key, jdata.preprocess(self.dataset, self.dataset.x[:2]))

    def units(self, done):
        return range(done + 1, self.config.epochs + 1)

    def steps_before(self, unit):
        return unit * self.steps_per_epoch

    def step_inputs(self, epoch):
        cfg = self.config
        last = self.steps_per_epoch - 1
        due = epoch % cfg.controller_train_every == 0
        for i, batch in enumerate(jdata.train_batches(self.train_split, cfg.batch_size,
                                                      seed=cfg.seed, epoch=epoch,
                                                      rows=self.mine)):
            yield put_batch(batch, self.mesh), epoch if (i == last and due) else None

    def step(self, state, batch, phase):
        """A weight step; after an epoch's last, the controller's phase when `phase` (the
        epoch) is given: its means are the epoch's row's."""
        state, metrics = self.enas.weight_step(state, batch,
                                               jax.random.fold_in(self.step_key, state.step))
        if phase is not None:
            state = self.train_controller(state, phase)
        return state, metrics

    def train_controller(self, state, epoch):
        cfg, main = self.config, is_main_process()
        if self.enas.controller_step.traces == 0 and main:
            print(loop.compile_note("controller steps"), flush=True)
        window = []
        for t in range(cfg.controller_train_steps):
            key = jax.random.fold_in(self.controller_key, state.controller_steps)
            actions, _, _, accuracies = self.enas.selection.score(
                state.params, state.batch_stats, state.controller, key, self.valid_split,
                candidates=cfg.controller_num_aggregate, seed=cfg.seed, draw=(epoch, t),
                rows=self.mine)
            state, m = self.enas.controller_step(state, actions, accuracies)
            window.append(m)
        means = jax.device_get(loop.stack_metrics(window))
        self.phase = {k: float(np.mean(v)) for k, v in means.items()}
        return state

    def row(self, state, epoch, means):
        space = self.enas.space
        greedy = self.enas.greedy(state)
        phase, self.phase = self.phase, {}
        row = {**means, **phase, "baseline": float(state.baseline),
               "greedy": space.to_dict(greedy)}
        if self.benchmark is not None:
            found = self.benchmark.lookup(space.benchmark_key(greedy))
            row.update({k.replace(PREFIX, PREFIX + "greedy_", 1): v for k, v in found.items()})
        return row

    def write(self, state, rows):
        save, title = self.config.save, f"ENAS on {self.config.space}, {self.config.dataset}"
        plot_curves(rows, os.path.join(save, "curves.png"), "epoch",
                    ["train_loss", "train_acc", "lr", "baseline"], title=title)
        trained = [r for r in rows if "reward" in r]
        if trained:
            plot_curves(trained, os.path.join(save, "controller.png"), "epoch",
                        [("reward", "baseline"), "entropy", "controller_loss"],
                        title=f"controller, {title}")

    def checkpoint_due(self, epoch):
        return True

    def summary(self, row):
        keys = [k for k in ("train_loss", "train_acc", "reward", "entropy") if k in row]
        return loop.summary_line(row, "epoch", keys)

    def finish(self, state, rows):
        """Sample `derive_samples` children, score each on a validation batch with the shared
        weights, keep the best: genotype.json, genotype.png, selection.json, result.json."""
        if not rows:
            return {"rows": rows, "state": state}
        cfg, space = self.config, self.enas.space
        key = jax.random.fold_in(self.init_key, 2)
        scores = self.enas.selection(state.params, state.batch_stats, state.controller, key,
                                     self.valid_split, candidates=cfg.derive_samples,
                                     seed=cfg.seed, draw=(cfg.epochs + 1,), rows=self.mine)
        best = scores.best()
        arch = scores.architecture(space, best)
        result = {"genotype": space.to_dict(arch), "arch": space.to_string(arch),
                  "valid_acc": float(scores.accuracies[best]),
                  "valid_loss": float(scores.losses[best]),
                  "candidates_acc": float(np.mean(scores.accuracies)),
                  "epochs": rows[-1]["epoch"]}
        if self.benchmark is not None:
            result.update(self.benchmark.lookup(space.benchmark_key(arch)))
        if is_main_process():
            save = cfg.save
            write_json(os.path.join(save, "genotype.json"), space.to_dict(arch))
            space.draw(arch, os.path.join(save, "genotype.png"),
                       title=f"ENAS: best of {cfg.derive_samples} sampled")
            write_json(os.path.join(save, "selection.json"), {"candidates": scores.table(space)})
            write_json(os.path.join(save, "result.json"), result)
            print(f"result: {self.summary(rows[-1])}", flush=True)
            print(f"derived architecture (best of {cfg.derive_samples} sampled, validation "
                  f"accuracy {result['valid_acc']:.4f}): {result['arch']}")
            if self.benchmark is not None:
                found = {k: v for k, v in result.items() if k.startswith(PREFIX)}
                print(f"benchmark ({self.benchmark.source}) of the derived cell: "
                      + ", ".join(f"{k[len(PREFIX):]} {v:.2f}" for k, v in found.items()))
            print(f"files in {save}: genotype.json, genotype.png, selection.json, result.json, "
                  "metrics.jsonl, curves.png, controller.png, config.json, checkpoints/ (the "
                  "newest two)", flush=True)
        return {"rows": rows, "state": state, "result": result}


def run_enas(config: EnasConfig, *, progress: bool = True) -> dict:
    """Run (or resume) an ENAS search; returns {"rows", "state", "result"}."""
    desc = f"ENAS on {config.space}, {config.dataset}"
    return loop.run(EnasJob(config), progress=progress, desc=desc)
