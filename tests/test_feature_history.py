"""The feature-history estimator (Cao 2021): the fine-tuning against a plain numpy SGD, the
estimate against a plain loop over the classifiers, answers known in advance, one compiled
program per shape, and the candidate trainer's records on the bundled digits."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import feature_history as fh
from jnas.data import load_dataset, train_batches
from jnas.errors import JnasError
from jnas.evaluation import TrainConfig, epoch_schedule
from jnas.feature_history import (
    EstimatorConfig,
    FeatureRecord,
    classifier,
    feature_history_estimate,
    fine_tune_classifier,
)
from jnas.spaces import DartsSpace

# Small enough to compile fast, with a short last batch (300 = 2 * 128 + 44) and K padded.
SMALL = EstimatorConfig(history=4, learning_rate=0.5, momentum=0.9, weight_decay=0.01,
                        batch_size=128, epochs=3)
N, M, D, C = 300, 200, 6, 3


def plain_fine_tune(kernel, bias, x, y, config, key):
    """The thesis's SGD written out in float64, one batch at a time (the data order drawn as
    `fine_tune_classifier` documents it)."""
    w, b = np.array(kernel, np.float64), np.array(bias, np.float64)
    mw, mb = np.zeros_like(w), np.zeros_like(b)
    n = len(x)
    batch = min(config.batch_size, n)
    steps = -(-n // batch)
    total, t = config.epochs * steps, 0
    for epoch_key in jax.random.split(key, config.epochs):
        order = np.asarray(jax.random.permutation(epoch_key, n))
        for s in range(steps):
            rows = order[s * batch : (s + 1) * batch]
            logits = x[rows] @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(rows)), y[rows]] -= 1  # d CE / d logits
            gw = x[rows].T @ p / len(rows) + config.weight_decay * w
            gb = p.mean(0) + config.weight_decay * b
            mw, mb = config.momentum * mw + gw, config.momentum * mb + gb
            lr = config.learning_rate * (1 - t / total)
            w, b, t = w - lr * mw, b - lr * mb, t + 1
    return w, b


def plain_estimate(records, config, key):
    """The estimate as a loop: fine-tune each record's classifier, average the softmaxes."""
    keys = jax.random.split(key, config.history)
    probs = []
    for record, k in zip(records, keys, strict=False):
        w, b = plain_fine_tune(record.kernel, record.bias, np.float64(record.train_features),
                               record.train_labels, config, k)
        logits = record.val_features @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(p / p.sum(1, keepdims=True))
    return np.mean(np.mean(probs, 0).argmax(1) == records[0].val_labels)


def clusters(seed, n_records, noise=1.5, labels_of_features=True):
    """Records of Gaussian class clusters in D dimensions (a new draw per epoch, as features
    change while a network trains), with small random classifiers; the validation labels are
    shared. `labels_of_features=False` draws every label independently of the features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, D))
    val_labels = rng.integers(0, C, M).astype(np.int32)
    records = []
    for _ in range(n_records):
        y = rng.integers(0, C, N).astype(np.int32)
        drawn = (y, val_labels) if labels_of_features else rng.integers(0, C, (2, max(N, M)))
        x, v = (centres[c[:size]] + noise * rng.normal(size=(size, D))
                for c, size in zip(drawn, (N, M), strict=True))
        records.append(FeatureRecord(x.astype(np.float32), y, v.astype(np.float32), val_labels,
                                     0.1 * rng.normal(size=(D, C)).astype(np.float32),
                                     0.1 * rng.normal(size=C).astype(np.float32)))
    return records


def test_fine_tuning_is_the_plain_sgd():
    record = clusters(0, 1)[0]
    key = jax.random.key(3)
    tune = jax.jit(lambda *a: fine_tune_classifier(*a, SMALL, key))
    got = tune(record.kernel, record.bias, record.train_features, record.train_labels)
    want = plain_fine_tune(record.kernel, record.bias, np.float64(record.train_features),
                           record.train_labels, SMALL, key)
    for g, w, start in zip(got, want, (record.kernel, record.bias), strict=True):
        # Measured: float32 against float64 differ by at most 2.4e-7 after the 9 steps.
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
        assert np.abs(w - start).max() > 0.3  # the steps moved it: the comparison means something
    # Another data order gives other weights: the order is the documented one, not any.
    other = plain_fine_tune(record.kernel, record.bias, np.float64(record.train_features),
                            record.train_labels, SMALL, jax.random.key(4))
    assert np.abs(other[0] - want[0]).max() > 1e-3


def test_the_estimate_is_the_plain_loop_and_compiles_once_per_shape():
    records = clusters(1, 3)
    key = jax.random.key(5)
    for k in (3, 1, 2):  # fewer records than K = 4: the padded slots weigh nothing
        got = feature_history_estimate(records[:k], SMALL, key)
        want = plain_estimate(records[:k], SMALL, key)
        assert 0.5 < want < 0.95  # neither trivial nor chance, so the details matter
        # Measured: equal; one validation example may sit on a float32 tie.
        assert abs(got - want) <= 1 / M
    assert fh._estimator(SMALL).traces == 1


def test_known_answers():
    key = jax.random.key(0)
    # Well separated classes: every classifier ends right on every example.
    assert feature_history_estimate(clusters(2, 4, noise=0.05), SMALL, key) == 1.0
    # Labels drawn independently of the features: chance, 1 / C, within 4 binomial sigmas.
    chance = feature_history_estimate(clusters(3, 4, labels_of_features=False), SMALL, key)
    assert abs(chance - 1 / C) < 4 * np.sqrt((1 / C) * (1 - 1 / C) / M)
    # Only the average is right: validation example j of class g = j % 3 has the feature
    # one_hot(g); classifier i is confidently right on the two classes g != i and mildly
    # wrong on class i, so each alone scores 2/3 and their averaged softmax 1. Learning rate
    # 0 leaves the classifiers as given.
    fixed = EstimatorConfig(history=3, learning_rate=0.0, batch_size=3, epochs=1)
    eye, labels = np.eye(3, dtype=np.float32), np.arange(30, dtype=np.int32) % 3
    records = []
    for i in range(3):
        kernel = 5 * eye
        kernel[i] = np.roll(eye[i], 1)  # class i's feature points to class i + 1
        records.append(FeatureRecord(eye, np.arange(3, dtype=np.int32), eye[labels], labels,
                                     kernel, np.zeros(3, np.float32)))
        alone = feature_history_estimate(records[-1:], fixed, key)
        assert alone == pytest.approx(2 / 3)
    assert feature_history_estimate(records, fixed, key) == 1.0


def test_bad_records_and_settings_are_named():
    records = clusters(4, 2)
    cases = [
        ([], "`records` is empty"),
        (records * 3, "more than `history` 4"),
        ([records[0]._replace(kernel=records[0].kernel[:-1])], "`records[0].kernel` has shape"),
        ([records[0], records[1]._replace(val_labels=records[1].val_labels[::-1])],
         "`records[1].val_labels` differ"),
        ([records[0]._replace(train_labels=records[0].train_labels + C)], "must lie in [0, 3)"),
        ([records[0]._replace(train_labels=np.float32(records[0].train_labels))],
         "must be integer class indices"),
        ([records[0]._replace(val_features=records[0].val_features * np.nan)], "non-finite"),
        ([tuple(records[0])], "must be a FeatureRecord"),
    ]
    for bad, message in cases:
        with pytest.raises(JnasError, match=re.escape(message)):
            feature_history_estimate(bad, SMALL, jax.random.key(0))
    for field, value in [("history", 0), ("batch_size", 1.5), ("momentum", 1.0),
                         ("learning_rate", -0.1), ("weight_decay", float("nan"))]:
        with pytest.raises(JnasError, match=f"`{field}`"):
            EstimatorConfig(**{field: value})


def test_the_linear_schedule_reaches_its_minimum_at_the_horizon():
    config = TrainConfig.published("nas-bench-201", dataset="digits", lr_schedule="linear",
                                   learning_rate=0.1, learning_rate_min=0.02, epochs=4)
    schedule = epoch_schedule(config, 10)
    got = [float(schedule(step)) for step in (0, 9, 10, 25, 39)]
    # Epoch e (from 0) of 4: 0.1 + (0.02 - 0.1) * e / 4, constant within the epoch.
    np.testing.assert_allclose(got, [0.1, 0.1, 0.08, 0.06, 0.04], rtol=1e-6)
    cosine = epoch_schedule(dataclasses.replace(config, lr_schedule="cosine"), 10)
    assert float(cosine(25)) == pytest.approx(0.02 + 0.08 * (1 + np.cos(np.pi * 2 / 4)) / 2)
    with pytest.raises(JnasError, match="`lr_schedule` must be one of cosine, linear"):
        dataclasses.replace(config, lr_schedule="step")


def test_the_darts_network_sows_its_classifier_input():
    space = DartsSpace(init_channels=4, layers=3)
    net = space.eval_network(space.load_arch("DARTS_V2"), 10, train=False)
    x = jnp.zeros((2, 8, 8, 3))
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    _, updates = jax.eval_shape(lambda v: net.apply(v, x, mutable=["intermediates"]), variables)
    (features,) = updates["intermediates"]["features"]
    kernel, _ = classifier(variables["params"], features.shape[1], 10)
    assert features.shape == (2, kernel.shape[0]) and kernel.shape == (16 * 4, 10)


def test_train_candidate_records_the_epochs_it_estimates_from(monkeypatch):
    train, val = load_dataset("digits"), load_dataset("digits", split="test")
    config = TrainConfig.published(
        "nas-bench-201", dataset="digits", init_channels=4, cells_per_stage=1, epochs=3,
        batch_size=64, lr_schedule="linear", devices=1)
    estimator = EstimatorConfig(history=2)
    seen = []

    def spy(records, config, key):
        seen.append(list(records))
        return feature_history_estimate(records, config, key)

    monkeypatch.setattr(fh, "feature_history_estimate", spy)
    rows = list(fh.train_candidate(config, train, val, estimator=estimator))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["history"] for r in rows] == [1, 2, 2]  # K = 2, fewer while fewer epochs ran
    assert [len(s) for s in seen] == [1, 2, 2]
    assert rows[-1]["val_acc"] > 0.8 and rows[-1]["feature_history"] > 0.8
    steps = len(train) // 64
    for epoch, records in enumerate(seen, start=1):
        r = records[-1]
        # The features are the classifier's input: 4C = 16 channels after the last stage.
        assert r.train_features.shape == (steps * 64, 16) and r.kernel.shape == (16, 10)
        assert r.val_features.shape == (len(val), 16)
        # The epoch's batches, in their order.
        want = np.concatenate([b["y"] for b in train_batches(train, 64, seed=0, epoch=epoch)])
        np.testing.assert_array_equal(r.train_labels, want)
        # The recorded layer on the recorded validation features is the network at the
        # epoch's end: it scores exactly the row's validation accuracy.
        acc = np.mean((r.val_features @ r.kernel + r.bias).argmax(1) == val.y)
        assert acc == pytest.approx(rows[epoch - 1]["val_acc"], abs=1 / len(val))
    # The deque keeps the last K: epoch 3's first record is epoch 2's last.
    np.testing.assert_array_equal(seen[2][0].kernel, seen[1][1].kernel)
