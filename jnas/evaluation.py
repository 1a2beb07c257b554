"""Evaluation training: a searched architecture's discrete network, trained from scratch by a
published protocol, ending in the test error that papers report.

`TrainConfig.published(protocol)` holds a protocol's settings: "darts" is DARTS's
cnn/train.py (C=36, 20 cells, 600 epochs, batch 96, SGD 0.025 cosine to 0, momentum 0.9,
weight decay 3e-4, gradient clipping 5, cutout 16, drop path 0.2 ramped linearly, auxiliary
head weighted 0.4), "nas-bench-201" the benchmark's (C=16, N=5, 200 epochs, batch 256, SGD 0.1
cosine to 0, Nesterov momentum 0.9, weight decay 5e-4). The protocol is a space's
(`Space.eval_defaults`), and so is the network (`Space.eval_network`).

`TrainConfig.lr_schedule` "linear" decays the learning rate linearly to `learning_rate_min` at
`epochs`, the multi-fidelity protocol of Cao (CMU-RI-TR-21-09, 2021, section 3.1 and appendix
A.1: SGD 0.1, linear, its horizon the largest budget), under which the first b epochs of a run
are the run of budget b (`jnas.feature_history.train_candidate`).

`run_train(config)` writes into `config.save`: `metrics.jsonl` (per epoch: train loss and
accuracy, test loss and accuracy, lr, drop-path probability, seconds), `curves.png`,
`result.json` (the final test accuracy and error, the architecture, the parameter counts),
`checkpoints/<epoch>/` and `config.json`; rerunning with the same `save` resumes.

Crops and flips are drawn on the host with the batch (`jnas.data.train_batches`); cutout and
drop path are drawn on the device inside the compiled step, from the step's key.
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
from jnas.config import check_common, check_sgd, option
from jnas.errors import JnasError
from jnas.io import write_json
from jnas.plotting import plot_curves
from jnas.search import cosine_schedule, weight_optimizer
from jnas.sharding import (
    ShardedStep,
    data_mesh,
    is_main_process,
    local_rows,
    put_batch,
    put_replicated,
)
from jnas.spaces import SPACES, Space, space_class, space_from_config
from jnas.steps import accuracy, cross_entropy, init_variables, masked_sums

DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One evaluation training. Defaults are DARTS's protocol (quark0/darts cnn/train.py with
    `--auxiliary --cutout`, as its README trains); `TrainConfig.published("nas-bench-201")`
    is the benchmark's. `init_channels` and `layers` shape the DARTS network,
    `init_channels` and `cells_per_stage` the NAS-Bench-201 one."""

    protocol: str = option("darts", "the published protocol, and the space of the "
                           "architecture", choices=tuple(SPACES))
    arch: str = option("DARTS_V2", "the architecture: a published one's name (DARTS_V1, "
                       "DARTS_V2, GDAS_V1, GDAS_F1), a genotype.json written by a search, or "
                       "the space's string (NAS-Bench-201's |op~0|+...)")
    dataset: str = option("cifar10", "digits (bundled, no download), cifar10, cifar100 or a "
                          ".npz path (then give `test_dataset`)")
    data_dir: str | None = option(None, "TFDS data_dir or folder of .npz files")
    test_dataset: str | None = option(None, "a .npz file of test images (default: the "
                                      "dataset's test split)")
    batch_size: int = option(96, "images per step")
    learning_rate: float = option(0.025, "SGD learning rate at the first epoch")
    learning_rate_min: float = option(0.0, "learning rate the schedule ends at, after "
                                      "`epochs` (stepped per epoch)")
    lr_schedule: str = option("cosine", "learning-rate schedule: cosine (DARTS, NAS-Bench-201) "
                              "or linear (Cao 2021's multi-fidelity runs)", choices=LR_SCHEDULES)
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum")
    weight_decay: float = option(3e-4, "L2 weight decay (of every parameter, as PyTorch's SGD)")
    epochs: int = option(600, "training epochs")
    init_channels: int = option(36, "channels of the first cells, C")
    layers: int = option(20, "cells (DARTS space); reduction cells at 1/3 and 2/3 of them")
    cells_per_stage: int = option(5, "cells per stage, N (NAS-Bench-201 space)")
    auxiliary_weight: float = option(0.4, "weight of the auxiliary head's loss (0: no head)")
    cutout_length: int = option(16, "side of cutout's square in a 32x32 image, scaled to the "
                                "image size (0: no cutout)")
    drop_path_prob: float = option(0.2, "drop-path probability of the last epoch, ramped "
                                   "linearly from 0")
    grad_clip: float = option(5.0, "gradient clipping by global norm (0: none)")
    dtype: str = option("float32", "compute dtype; bfloat16 keeps float32 weights and "
                        "BatchNorm statistics", choices=DTYPES)
    seed: int = option(0, "random seed: initialisation, data order, augmentation")
    save: str = option("runs/train", "output folder; rerun to resume")
    devices: int | None = option(None, "devices per process to split each batch over "
                                 "(default: all local devices)")

    def __post_init__(self):
        check_common(self)
        check_sgd(self)
        for name in ("auxiliary_weight", "cutout_length", "weight_decay"):
            if getattr(self, name) < 0:
                raise JnasError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.drop_path_prob < 1:
            raise JnasError(f"`drop_path_prob` must lie in [0, 1), got {self.drop_path_prob}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise JnasError(f"`lr_schedule` must be one of {', '.join(LR_SCHEDULES)}, got "
                            f"{self.lr_schedule!r}")
        if self.dtype not in DTYPES:
            raise JnasError(f"`dtype` must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.dataset.endswith(".npz") and self.test_dataset is None:
            raise JnasError(
                f"`dataset` {self.dataset} is one .npz file with no test split: pass the test "
                "images as `test_dataset` (another .npz file)"
            )
        self.network(10, train=True)  # the architecture, and what its network refuses

    @classmethod
    def published(cls, protocol: str = "darts", **overrides):
        """The published protocol of the space `protocol`, then `overrides`."""
        return cls(protocol=protocol, **{**space_class(protocol).eval_defaults, **overrides})

    def space(self) -> Space:
        return space_from_config(self, self.protocol, _CONFIG_DEFAULTS)

    def architecture(self):
        return load_arch(self.space(), self.arch)

    def network(self, num_classes: int, *, train: bool):
        return self.space().eval_network(
            self.architecture(), num_classes, train=train, auxiliary=self.auxiliary_weight > 0,
            drop_path=self.drop_path_prob > 0,
        )


_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def load_arch(space: Space, text: str):
    """`space.load_arch(text)`; an architecture of another space is named as such."""
    try:
        return space.load_arch(text)
    except JnasError as error:
        for other in SPACES.values():
            if isinstance(space, other):
                continue
            try:
                other().load_arch(text)
            except JnasError:
                continue
            raise JnasError(
                f"`arch` {text!r} is an architecture of the {other.name} space: train it with "
                f"`protocol` {other.name}"
            ) from None
        raise JnasError(f"`arch`: {error}") from None


def load_test_set(config: TrainConfig, train: jdata.ImageDataset) -> jdata.ImageDataset:
    """The test split of `config.dataset`, or the `test_dataset` file normalised as `train`."""
    if config.test_dataset is None:
        return jdata.load_dataset(config.dataset, config.data_dir, split="test")
    return dataclasses.replace(jdata.load_dataset(config.test_dataset), mean=train.mean,
                               std=train.std)


def epoch_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """`config.lr_schedule` from `learning_rate` to `learning_rate_min` over `epochs`, stepped
    once per epoch: "cosine" is `jnas.search.cosine_schedule`; "linear" is, at epoch e
    (counted from 0), `learning_rate + (learning_rate_min - learning_rate) * e / epochs`."""
    if config.lr_schedule == "cosine":
        return cosine_schedule(config, steps_per_epoch)
    per_epoch = optax.linear_schedule(config.learning_rate, config.learning_rate_min,
                                      config.epochs)
    return lambda count: per_epoch(count // steps_per_epoch)


def count_params(tree) -> int:
    """The number of scalars in a pytree of arrays (parameters)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def cutout(x, length: int, key):
    """DARTS's Cutout (cnn/utils.py), after normalisation: per image, zeros on a `length` x
    `length` square centred on a uniformly drawn pixel, cut off at the border."""
    n, h, w = x.shape[:3]
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (n, 1, 1), 0, h)
    cx = jax.random.randint(kx, (n, 1, 1), 0, w)
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    half = length // 2
    inside = ((cy - half <= rows) & (rows < cy + half)) & ((cx - half <= cols) & (cols < cx + half))
    return jnp.where(inside[..., None], jnp.zeros((), x.dtype), x)


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


class Trainer:
    """An evaluation training's state, initialisation and compiled steps (`config`).

    With `record_features`, the training step's metrics also hold "features": the batch's
    penultimate features (the classifier's input, float32, one row per image), for estimators
    that read them (`jnas.feature_history`); `feature_step` gives those of an evaluation batch.
    """

    def __init__(self, config: TrainConfig, num_classes: int, steps_per_epoch: int,
                 image_size: int, mesh=None, *, record_features: bool = False):
        self.config = config
        self.record_features = record_features
        self.mesh = data_mesh(1) if mesh is None else mesh
        self.space = config.space()
        self.arch = config.architecture()
        self.model = config.network(num_classes, train=True)
        self.eval_model = config.network(num_classes, train=False)
        self.steps_per_epoch = steps_per_epoch
        self.lr_schedule = epoch_schedule(config, steps_per_epoch)
        self.tx = weight_optimizer(config, self.lr_schedule)
        self.dtype = jnp.dtype(config.dtype)
        self.cutout = round(config.cutout_length * image_size / 32)
        self.step = ShardedStep(self._step, self.mesh, batch_argnums=(1,))
        self.eval_step = ShardedStep(self._eval_step, self.mesh, batch_argnums=(1,))
        self.feature_step = ShardedStep(self._feature_step, self.mesh, batch_argnums=(1,))

    def init(self, key, sample_x) -> TrainState:
        """Flax's initialisers, replicated over the mesh (the same values on every process)."""
        k_params, k_drop = jax.random.split(key)
        variables = init_variables(
            self.model.init, {"params": k_params, "dropout": k_drop}, sample_x, 0.0
        )
        params = variables["params"]
        state = TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"],
                           self.tx.init(params))
        return put_replicated(state, self.mesh)

    def _compute(self, params, x):
        """Weights and inputs in the compute dtype; the float32 weights stay the masters."""
        return jax.tree.map(lambda p: p.astype(self.dtype), params), x.astype(self.dtype)

    def loss(self, params, batch_stats, x, y, drop_prob, key, auxiliary_weight):
        """Cross-entropy of the logits plus `auxiliary_weight` times that of the auxiliary
        head's (when the network has one), in training mode -> (total, (the logits' loss,
        logits, updated BatchNorm statistics)), and with `record_features` a fourth: the
        penultimate features."""
        params, x = self._compute(params, x)
        collections = ["batch_stats", "intermediates"] if self.record_features else ["batch_stats"]
        (logits, aux), updates = self.model.apply(
            {"params": params, "batch_stats": batch_stats}, x, drop_prob,
            rngs={"dropout": key}, mutable=collections,
        )
        loss = cross_entropy(logits.astype(jnp.float32), y)
        total = loss
        if aux is not None:
            total = loss + auxiliary_weight * cross_entropy(aux.astype(jnp.float32), y)
        out = (loss, logits, updates["batch_stats"])
        if self.record_features:
            out += (updates["intermediates"]["features"][0].astype(jnp.float32),)
        return total, out

    def _step(self, state: TrainState, batch, key):
        cfg = self.config
        epoch = state.step // self.steps_per_epoch
        # DARTS's train.py sets drop_path_prob * epoch / epochs, epochs counted from 0.
        drop_prob = cfg.drop_path_prob * epoch / cfg.epochs
        k_cut, k_drop = jax.random.split(key)
        x, y = batch["x"], batch["y"]
        if self.cutout:
            x = cutout(x, self.cutout, k_cut)
        (_, (loss, logits, batch_stats, *features)), grads = jax.value_and_grad(
            self.loss, has_aux=True
        )(state.params, state.batch_stats, x, y, drop_prob, k_drop, cfg.auxiliary_weight)
        metrics = {"train_loss": loss, "train_acc": accuracy(logits, y),
                   "lr": self.lr_schedule(state.step), "drop_path_prob": drop_prob}
        if features:
            metrics["features"] = features[0]
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        state = TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                           batch_stats, opt_state)
        return state, metrics

    def _eval_step(self, state: TrainState, batch):
        """Sums over the real rows of a padded batch: (loss_sum, correct_sum, count)."""
        return self._feature_step(state, batch)[1]

    def _feature_step(self, state: TrainState, batch):
        """(the batch's penultimate features in float32, `_eval_step`'s sums), in inference
        mode; padded rows have features too (`batch["mask"]` marks the real ones)."""
        params, x = self._compute(state.params, batch["x"])
        (logits, _), updates = self.eval_model.apply(
            {"params": params, "batch_stats": state.batch_stats}, x, mutable=["intermediates"]
        )
        features = updates["intermediates"]["features"][0].astype(jnp.float32)
        return features, masked_sums(logits.astype(jnp.float32), batch)


class TrainJob:
    """One evaluation training as a job of the run loop: epochs of steps on the training set,
    each evaluated on the test set."""

    unit = "epoch"
    step_name = "training step"
    loss_key = "train_loss"
    may_differ = loop.RUN_FIELDS
    hint = "Lower `learning_rate`, or check the data for NaNs."

    def __init__(self, config: TrainConfig):
        self.config = config
        self.dataset = jdata.load_dataset(config.dataset, config.data_dir, split="train")
        self.test_set = load_test_set(config, self.dataset)
        self.steps_per_epoch = jdata.num_train_batches(self.dataset, config.batch_size)
        self.mesh = data_mesh(config.devices)
        self.mine = local_rows(self.mesh, config.batch_size)
        self.trainer = Trainer(config, self.dataset.num_classes, self.steps_per_epoch,
                               self.dataset.x.shape[1], self.mesh)
        self.steps = (self.trainer.step, self.trainer.eval_step)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.init_key, self.step_key = jax.random.split(jax.random.key(config.seed))

    def init(self):
        state = self.trainer.init(self.init_key, jdata.preprocess(self.dataset,
                                                                  self.dataset.x[:2]))
        self.params = param_counts(state.params)
        if is_main_process():
            t = self.trainer
            print(f"{self.config.arch} ({t.space.name} space): {self.params['total']:,} "
                  f"parameters, {self.params['total'] / 1e6:.2f} M" + (
                      f" without the auxiliary head's {self.params['auxiliary_head']:,} (the "
                      "official train.py leaves it out)" if self.params["auxiliary_head"] else ""),
                  flush=True)
        return state

    def units(self, done):
        return range(done + 1, self.config.epochs + 1)

    def steps_before(self, unit):
        return unit * self.steps_per_epoch

    def step_inputs(self, epoch):
        cfg = self.config
        for batch in jdata.train_batches(self.dataset, cfg.batch_size, seed=cfg.seed,
                                         epoch=epoch, rows=self.mine):
            yield (put_batch(batch, self.mesh),)

    def step(self, state, batch):
        return self.trainer.step(state, batch, jax.random.fold_in(self.step_key, state.step))

    def row(self, state, epoch, means):
        t = self.trainer
        test_loss, test_acc = loop.evaluate(t.eval_step, t.mesh, state, self.test_set,
                                       self.config.batch_size)
        return {**means, "test_loss": test_loss, "test_acc": test_acc}

    def write(self, state, rows):
        panels = [("train_loss", "test_loss"), ("train_acc", "test_acc"), "lr"]
        if self.config.drop_path_prob:
            panels.append("drop_path_prob")
        plot_curves(rows, os.path.join(self.config.save, "curves.png"), "epoch", panels,
                    title=f"{self.config.arch}, {self.config.dataset}")

    def checkpoint_due(self, epoch):
        return True

    def summary(self, row):
        return loop.summary_line(row, "epoch", ("train_loss", "train_acc", "test_loss",
                                                "test_acc"))

    def finish(self, state, rows):
        if not rows or not is_main_process():
            return {"rows": rows, "state": state}
        space, arch, last = self.trainer.space, self.trainer.arch, rows[-1]
        result = {
            "test_acc": last["test_acc"],
            "test_error": 100 * (1 - last["test_acc"]),
            "test_loss": last["test_loss"],
            "epochs": last["epoch"],
            "arch": space.to_dict(arch),
            "params": self.params["total"],
            "params_auxiliary_head": self.params["auxiliary_head"],
        }
        write_json(os.path.join(self.config.save, "result.json"), result)
        print(f"result: {self.summary(last)}; test error {result['test_error']:.2f} %")
        print(f"files in {self.config.save}: result.json, metrics.jsonl, curves.png, "
              "config.json, checkpoints/ (the newest two)", flush=True)
        return {"rows": rows, "state": state, "result": result}


def param_counts(params) -> dict[str, int]:
    """{"total": the network's parameters without the auxiliary head (as DARTS's
    `count_parameters_in_MB` counts them), "auxiliary_head": the head's}."""
    aux = count_params(params.get("auxiliary_head", {}))
    return {"total": count_params(params) - aux, "auxiliary_head": aux}


def run_train(config: TrainConfig, *, progress: bool = True) -> dict:
    """Run (or resume) an evaluation training; returns {"rows", "state", "result"}."""
    desc = f"training {config.arch} ({config.protocol} protocol), {config.dataset}"
    return loop.run(TrainJob(config), progress=progress, desc=desc)
