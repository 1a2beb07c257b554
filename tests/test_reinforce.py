"""jnas.reinforce_grad against the exact gradient of the expected reward (float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas.controller import Controller
from jnas.spaces import space_class

T, N = 3, 3  # a factorised policy: 3 decisions of 3 options, 27 action sequences
ALL = np.array(list(itertools.product(range(N), repeat=T)))
WEIGHT = 0.3


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def log_prob_fn(logits, a):
    """The factorised categorical policy: sum_t log softmax(logits_t)[a_t], and its entropy
    (the same for every sample)."""
    logp = jax.nn.log_softmax(logits)
    return logp[jnp.arange(T), a].sum(), -(jnp.exp(logp) * logp).sum()


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(T, N)))
    rewards = jnp.asarray(rng.uniform(80, 95, size=len(ALL)))  # R(a), row of ALL
    return logits, rewards


def exact_objective(logits, rewards):
    """E[R] + WEIGHT * H(theta), by enumeration."""
    logp = jax.nn.log_softmax(logits)
    p = jnp.exp(logp[jnp.arange(T), ALL].sum(1))
    return p @ rewards - WEIGHT * (jnp.exp(logp) * logp).sum()


def one_sample(logits, a, r, baseline):
    return jnas.reinforce_grad(log_prob_fn, logits, a[None], r[None], baseline,
                               entropy_weight=WEIGHT)[1]


@pytest.mark.parametrize("baseline", [0.0, 87.5, -20.0])
def test_expected_estimate_is_the_exact_gradient_for_any_baseline(problem, baseline):
    logits, rewards = problem
    grads = jax.vmap(one_sample, in_axes=(None, 0, 0, None))(logits, ALL, rewards, baseline)
    p = jnp.exp(jax.vmap(log_prob_fn, in_axes=(None, 0))(logits, ALL)[0])
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-14)
    expectation = jnp.einsum("k,kij->ij", p, grads)
    exact = jax.grad(exact_objective)(logits, rewards)
    # The loss is minimised: its gradient is minus the ascent direction.
    np.testing.assert_allclose(expectation, -exact, rtol=1e-10, atol=1e-12)


def test_monte_carlo_estimate_is_within_its_standard_error(problem):
    logits, rewards = problem
    k = 20_000
    actions = jax.random.categorical(jax.random.key(0), logits, shape=(k, T))
    index = (actions * N ** jnp.arange(T - 1, -1, -1)).sum(1)  # row of ALL
    sample_rewards = rewards[index]
    baseline = 85.0
    loss, grads, _ = jnas.reinforce_grad(log_prob_fn, logits, actions, sample_rewards,
                                         baseline, entropy_weight=WEIGHT)
    per_sample = jax.vmap(one_sample, in_axes=(None, 0, 0, None))(
        logits, actions, sample_rewards, baseline)
    np.testing.assert_allclose(grads, per_sample.mean(0), rtol=1e-10, atol=1e-12)
    stderr = per_sample.std(0) / np.sqrt(k)
    exact = -jax.grad(exact_objective)(logits, rewards)
    assert np.all(np.abs(grads - exact) < 4 * stderr + 1e-12)
    assert np.all(stderr < 0.1 * np.abs(exact).max())  # a check with teeth


def test_loss_value_and_baseline_update(problem):
    logits, _ = problem
    actions = jnp.array([[0, 1, 2], [2, 2, 0]])
    rewards = jnp.array([90.0, 80.0])
    loss, _, new = jnas.reinforce_grad(log_prob_fn, logits, actions, rewards, 84.0,
                                       baseline_decay=0.9, entropy_weight=WEIGHT)
    logp, ent = jax.vmap(log_prob_fn, in_axes=(None, 0))(logits, actions)
    np.testing.assert_allclose(loss, -np.mean((rewards - 84.0) * logp + WEIGHT * ent),
                               rtol=1e-14)
    np.testing.assert_allclose(new, 0.9 * 84.0 + 0.1 * 85.0, rtol=1e-14)
    # Under jit, with the baseline carried as an array.
    step = jax.jit(lambda b: jnas.reinforce_grad(log_prob_fn, logits, actions, rewards, b)[2])
    np.testing.assert_allclose(step(jnp.float64(84.0)), 0.99 * 84.0 + 0.01 * 85.0,
                               rtol=1e-14)


def test_expectation_with_the_lstm_controller_is_the_gradient_of_the_expected_reward():
    """The estimator is unbiased for an autoregressive policy too: E_a[(R(a) - b) grad log
    p(a)] over all 5^6 NAS-Bench-201 cells equals grad sum_a p(a) R(a)."""
    ctrl = Controller(space_class("nas-bench-201")(), lstm_size=8)
    params = jax.tree.map(lambda x: 10 * x.astype(jnp.float64), ctrl.init(jax.random.key(3)))
    every = jnp.asarray(np.indices((5,) * 6).reshape(6, -1).T)
    rewards = jnp.asarray(np.random.default_rng(1).uniform(0, 1, len(every)))

    def expected_reward(params):
        logp = jax.vmap(ctrl.log_prob, in_axes=(None, 0))(params, every)[0]
        return jnp.exp(logp) @ rewards

    p = jnp.exp(jax.vmap(ctrl.log_prob, in_axes=(None, 0))(params, every)[0])
    baseline = 0.4
    # Weighting each sample's advantage by K p(a) turns the sample mean into the expectation.
    weighted = baseline + len(every) * p * (rewards - baseline)
    _, grads, _ = jnas.reinforce_grad(ctrl.log_prob, params, every, weighted, baseline)
    exact = jax.grad(expected_reward)(params)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(exact))
    assert scale > 1e-3
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(exact), strict=True):
        np.testing.assert_allclose(g, -e, atol=1e-10 * scale)


def test_bad_input_names_the_argument(problem):
    logits, _ = problem
    with pytest.raises(jnas.JnasError, match="`rewards`"):
        jnas.reinforce_grad(log_prob_fn, logits, jnp.zeros((2, T), int), jnp.zeros((2, 1)), 0.0)
    with pytest.raises(jnas.JnasError, match="leading axis of the K=3"):
        jnas.reinforce_grad(log_prob_fn, logits, jnp.zeros((2, T), int), jnp.zeros(3), 0.0)
    with pytest.raises(jnas.JnasError, match="`baseline_decay`"):
        jnas.reinforce_grad(log_prob_fn, logits, jnp.zeros((2, T), int), jnp.zeros(2), 0.0,
                            baseline_decay=1.5)
