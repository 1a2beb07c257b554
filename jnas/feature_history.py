"""The feature-history performance estimator (Cao, CMU-RI-TR-21-09, 2021, sections 3.1-3.2 and
appendix A.1), and a candidate trainer that feeds it, for multi-fidelity searches.

A network's validation accuracy after a short budget ranks candidates badly while its learning
rate is still high. The estimator reads what the last epochs learned instead: during training,
the penultimate features (the input of the final linear layer) of the training batches, and at
each epoch's end the validation set's features and the linear layer itself, for the last K = 10
epochs (all of them while fewer have run). Per recorded epoch, a copy of that epoch's linear
layer is fine-tuned on that epoch's training features (cross-entropy, SGD momentum 0.9, weight
decay 5e-4, lr 0.05 decayed linearly to 0, batch 1,024, 5 epochs); the estimate is the
validation accuracy of the average of the K fine-tuned classifiers' softmax outputs, each on its
own epoch's validation features. The K fine-tunings are one `jax.vmap`, compiled once per
shape: records of fewer epochs are padded to K and weighted 0 in the average.

The thesis's multi-fidelity runs (section 3.1; used by `train_candidate` through a
`TrainConfig`): NAS-Bench-201 networks on 8,000 CIFAR-10 training and 2,000 validation images,
SGD lr 0.1, momentum 0.9, weight decay 5e-4, decayed linearly over the largest budget
(`TrainConfig(lr_schedule="linear", epochs=<largest budget>)`), so that the first b epochs of a
run are the run of budget b.

The thesis's code is not public; the settings above are those of its appendix A.1. Where this
fills in what the text leaves open: the fine-tuning keeps PyTorch's conventions (weight decay on
the bias too, the last short batch of each epoch kept, the learning rate decayed per step); its
data order is drawn from the estimator's key.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jnas import data as jdata
from jnas.errors import JnasError
from jnas.evaluation import TrainConfig, Trainer
from jnas.loop import stack_metrics
from jnas.search import weight_optimizer
from jnas.sharding import ShardedStep, data_mesh, local_rows, put_batch


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    """The estimator's settings: Cao 2021, appendix A.1 (K = 10 epochs; the fine-tuning's SGD)."""

    history: int = 10  # K, the last epochs recorded
    learning_rate: float = 0.05  # decayed linearly to 0 over the fine-tuning
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 1024
    epochs: int = 5
    # The rest of what `jnas.search.weight_optimizer` reads: the thesis's SGD has neither.
    nesterov: ClassVar[bool] = False
    grad_clip: ClassVar[float] = 0.0

    def __post_init__(self):
        for name in ("history", "batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise JnasError(f"`{name}` must be an integer >= 1, got {value!r}")
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise JnasError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if not 0 <= self.momentum < 1:
            raise JnasError(f"`momentum` must lie in [0, 1), got {self.momentum!r}")


class FeatureRecord(NamedTuple):
    """One epoch's record: the penultimate features of its training batches (N, D) with their
    labels (N,), those of the validation set at the epoch's end (M, D) with its labels (M,),
    and the final linear layer then: `logits = features @ kernel + bias`, kernel (D, C)."""

    train_features: np.ndarray
    train_labels: np.ndarray
    val_features: np.ndarray
    val_labels: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray


def fine_tune_classifier(kernel, bias, features, labels, config: EstimatorConfig, key):
    """A linear classifier `(kernel (D, C), bias (C,))` fine-tuned on `features` (N, D) with
    integer `labels` (N,) -> the new `(kernel, bias)`; traceable (the estimator vmaps it).

    SGD as PyTorch's, for `config.epochs` epochs of B = min(batch_size, N) rows: epoch e visits
    the rows in the order `jax.random.permutation(jax.random.split(key, epochs)[e], N)`, in
    consecutive batches S_t of B rows, the last one shorter when B does not divide N. Step t
    of T = epochs * ceil(N / B), with theta = (kernel, bias) and m_0 = 0:

        g_t = grad mean_{i in S_t} CE(softmax(x_i @ kernel + bias), y_i) + weight_decay * theta
        m_t = momentum * m_{t-1} + g_t
        theta <- theta - learning_rate * (1 - t / T) * m_t
    """
    n = features.shape[0]
    batch = min(config.batch_size, n)
    steps = -(-n // batch)
    tx = weight_optimizer(
        config, optax.linear_schedule(config.learning_rate, 0.0, config.epochs * steps)
    )
    # Static batch shapes: the epoch's order is padded to steps * batch and the padding masked.
    real = (jnp.arange(steps * batch) < n).reshape(steps, batch).astype(features.dtype)

    def loss(params, index, mask):
        logits = features[index] @ params["kernel"] + params["bias"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels[index])
        return jnp.sum(losses * mask) / jnp.sum(mask)

    def step(carry, batch):
        params, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss)(params, *batch), opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def epoch(carry, epoch_key):
        order = jnp.pad(jax.random.permutation(epoch_key, n), (0, steps * batch - n))
        return jax.lax.scan(step, carry, (order.reshape(steps, batch), real))[0], None

    params = {"kernel": kernel, "bias": bias}
    keys = jax.random.split(key, config.epochs)
    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), keys)
    return params["kernel"], params["bias"]


def feature_history_estimate(records: Sequence[FeatureRecord], config: EstimatorConfig,
                             key) -> float:
    """The feature-history estimate of the recorded epochs `records` (oldest first, at most
    `config.history`; all share one validation set, in one order):

        estimate = mean_j [argmax_c (1/k) sum_{i<k} softmax(v_ij @ W_i + b_i)_c == y_j]

    with k = len(records), v_ij record i's validation features and (W_i, b_i) record i's
    classifier fine-tuned on record i's training features (`fine_tune_classifier`, its data
    order from `jax.random.split(key, config.history)[i]`). One compiled program per shape
    and config fine-tunes all the classifiers in one `vmap`, whatever k is.
    """
    records = _check_records(records, config.history)
    k = len(records)
    # Padding with copies of the first record keeps one shape; its weight 0 drops them.
    padded = records + records[:1] * (config.history - k)
    stacked = FeatureRecord(*(np.stack(column) for column in zip(*padded, strict=True)))
    weights = (np.arange(config.history) < k).astype(np.float32)
    return float(_estimator(config)(stacked, weights, key))


@functools.cache
def _estimator(config: EstimatorConfig) -> ShardedStep:
    """`config`'s compiled estimate, shared by every caller (its `traces` count compilations)."""

    def estimate(stacked: FeatureRecord, weights, key):
        keys = jax.random.split(key, config.history)
        kernels, biases = jax.vmap(
            lambda w, b, x, y, k: fine_tune_classifier(w, b, x, y, config, k)
        )(stacked.kernel, stacked.bias, stacked.train_features, stacked.train_labels, keys)
        logits = jnp.einsum("kmd,kdc->kmc", stacked.val_features, kernels) + biases[:, None]
        probs = jnp.einsum("k,kmc->mc", weights, jax.nn.softmax(logits)) / jnp.sum(weights)
        return jnp.mean(jnp.argmax(probs, -1) == stacked.val_labels[0])

    return ShardedStep(estimate, data_mesh(1))


def _check_records(records, history: int) -> list[FeatureRecord]:
    """The records as float32 features and int32 labels, or an error naming what is wrong."""
    records = list(records)
    if not records:
        raise JnasError("`records` is empty: record at least one epoch before estimating")
    if len(records) > history:
        raise JnasError(
            f"`records` holds {len(records)} epochs, more than `history` {history}: pass the "
            f"last {history} (or raise `history`)"
        )
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, FeatureRecord):
            raise JnasError(f"`records[{i}]` must be a FeatureRecord, got {type(record).__name__}")
        for name in ("train_labels", "val_labels"):
            if not np.issubdtype(np.asarray(getattr(record, name)).dtype, np.integer):
                raise JnasError(f"`records[{i}].{name}` must be integer class indices, got "
                                f"{np.asarray(getattr(record, name)).dtype}")
        r = FeatureRecord(*(np.asarray(v, np.int32 if "labels" in name else np.float32)
                            for name, v in zip(FeatureRecord._fields, record, strict=True)))
        n, d = r.train_features.shape if r.train_features.ndim == 2 else (-1, -1)
        m = len(r.val_features) if r.val_features.ndim == 2 else -1
        c = r.bias.shape[0] if r.bias.ndim == 1 else -1
        want = {"train_features": (n, d), "train_labels": (n,), "val_features": (m, d),
                "val_labels": (m,), "kernel": (d, c), "bias": (c,)}
        for name, shape in want.items():
            if min(shape) < 1 or getattr(r, name).shape != shape:
                raise JnasError(
                    f"`records[{i}].{name}` has shape {getattr(r, name).shape}: a record needs "
                    "train_features (N, D), train_labels (N,), val_features (M, D), val_labels "
                    "(M,), kernel (D, C) and bias (C,), none of them empty"
                )
        if out and any(getattr(r, f).shape != getattr(out[0], f).shape for f in want):
            raise JnasError(f"`records[{i}]` has other shapes than `records[0]`: record every "
                            "epoch with the same data and network")
        if out and not np.array_equal(r.val_labels, out[0].val_labels):
            raise JnasError(f"`records[{i}].val_labels` differ from `records[0]`'s: every "
                            "epoch's validation features must be of one set, in one order")
        for name in ("train_labels", "val_labels"):
            labels = getattr(r, name)
            if labels.min() < 0 or labels.max() >= c:
                raise JnasError(f"`records[{i}].{name}` must lie in [0, {c}) (C = the bias's "
                                f"length), found {labels.min()}..{labels.max()}")
        for name in ("train_features", "val_features", "kernel", "bias"):
            if not np.isfinite(getattr(r, name)).all():
                raise JnasError(f"`records[{i}].{name}` has non-finite values: the training "
                                "diverged; lower its `learning_rate`")
        out.append(r)
    return out


def classifier(params: Mapping, dim: int, num_classes: int) -> tuple:
    """The network's final linear layer `(kernel (dim, num_classes), bias)` as stored in
    `params`: the one top-level parameter group of that shape (NAS-Bench-201's "classifier",
    DARTS's "Dense_0")."""
    found = [v for v in params.values() if isinstance(v, Mapping) and set(v) == {"kernel", "bias"}
             and v["kernel"].shape == (dim, num_classes)]
    if len(found) != 1:
        raise JnasError(
            f"the network has {len(found)} top-level linear layers of shape ({dim}, "
            f"{num_classes}), need exactly one: its classifier of the sown features"
        )
    return found[0]["kernel"], found[0]["bias"]


def train_candidate(config: TrainConfig, train_set: jdata.ImageDataset,
                    val_set: jdata.ImageDataset, *,
                    estimator: EstimatorConfig | None = EstimatorConfig(), seed_key=None,
                    progress: bool = False) -> Iterator[dict]:
    """Train `config.arch` by `config` (`jnas.evaluation.Trainer`: its protocol, network and
    optimizer; the learning-rate schedule's horizon is `config.epochs`) on `train_set`,
    yielding after each epoch e = 1, 2, ...:

        {"epoch": e, "train_loss", "train_acc": the means over the epoch's steps,
         "val_loss", "val_acc": `val_set`'s at the epoch's end (BatchNorm in inference mode),
         "seconds": the epoch's training steps and validation pass (the first compiles),
         and with an `estimator`: "feature_history": `feature_history_estimate` of the last
         "history" = min(K, e) epochs, "estimator_seconds": the recording's and the
         estimate's overhead (the first compiles)}

    A generator: leave the loop to stop (a pruned trial). The initialisation, the dropout and
    the estimator's keys come from `seed_key` (default `jax.random.key(config.seed)`), the
    data order and augmentation from `config.seed`. One process (its devices split the
    batch: `config.devices`); `config.save` is not used.
    """
    if jax.process_count() > 1:
        raise JnasError("`train_candidate` runs in one process: start one per trial")
    if val_set.num_classes != train_set.num_classes or val_set.x.shape[1:] != train_set.x.shape[1:]:
        raise JnasError(
            f"`val_set` ({val_set.num_classes} classes, images {val_set.x.shape[1:]}) must match "
            f"`train_set` ({train_set.num_classes} classes, images {train_set.x.shape[1:]})"
        )
    steps = jdata.num_train_batches(train_set, config.batch_size)
    mesh = data_mesh(config.devices)
    mine = local_rows(mesh, config.batch_size)
    trainer = Trainer(config, train_set.num_classes, steps, train_set.x.shape[1], mesh,
                      record_features=estimator is not None)
    key = jax.random.key(config.seed) if seed_key is None else seed_key
    init_key, step_key, estimate_key = jax.random.split(key, 3)
    state = trainer.init(init_key, jdata.preprocess(train_set, train_set.x[:2]))
    records = collections.deque(maxlen=estimator.history if estimator else 1)
    with tqdm(total=config.epochs * steps, desc=f"training {config.arch}",
              disable=not progress) as bar:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            metrics, labels = [], []
            for batch in jdata.train_batches(train_set, config.batch_size, seed=config.seed,
                                             epoch=epoch, rows=mine):
                state, m = trainer.step(state, put_batch(batch, mesh),
                                        jax.random.fold_in(step_key, state.step))
                metrics.append(m)
                labels.append(batch["y"])
                bar.update(1)
            features = [m.pop("features") for m in metrics] if estimator else []
            means = {k: float(np.mean(v)) for k, v in
                     jax.device_get(stack_metrics(metrics)).items()}
            if not np.isfinite(means["train_loss"]):
                raise JnasError(f"the loss of {config.arch} became non-finite in epoch {epoch}; "
                                "lower `learning_rate`")
            val_loss, val_acc, val_features = _validate(trainer, state, val_set, mine)
            row = {"epoch": epoch, "train_loss": means["train_loss"],
                   "train_acc": means["train_acc"], "val_loss": val_loss, "val_acc": val_acc,
                   "seconds": time.perf_counter() - start}
            if estimator is not None:
                start = time.perf_counter()
                train_features = np.concatenate(jax.device_get(features))
                records.append(FeatureRecord(
                    train_features, np.concatenate(labels), val_features, val_set.y,
                    *jax.device_get(classifier(state.params, train_features.shape[1],
                                               train_set.num_classes))))
                row["feature_history"] = feature_history_estimate(
                    records, estimator, jax.random.fold_in(estimate_key, epoch))
                row["history"] = len(records)
                row["estimator_seconds"] = time.perf_counter() - start
            yield row


def _validate(trainer: Trainer, state, dataset: jdata.ImageDataset, rows: slice):
    """(mean loss, accuracy, penultimate features (len(dataset), D)) of a whole split."""
    outputs = [trainer.feature_step(state, put_batch(batch, trainer.mesh))
               for batch in jdata.eval_batches(dataset, trainer.config.batch_size, rows)]
    features, sums = zip(*jax.device_get(outputs), strict=True)
    loss, correct, count = np.sum(np.asarray(sums, np.float64), axis=0)
    return float(loss / count), float(correct / count), np.concatenate(features)[: len(dataset)]
