"""jnas.controller: ENAS's LSTM controller is a normalised policy over a space's decisions,
checked by enumerating every architecture (float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.controller import Controller
from jnas.errors import JnasError
from jnas.spaces import space_class
from tests.common import OPS

NB201 = space_class("nas-bench-201")()
DARTS = space_class("darts")(nodes=2, primitives=OPS)


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def float64_params(ctrl, seed, scale):
    """Initial parameters scaled up, so that the policy is far from uniform."""
    with jax.enable_x64(True):
        params = ctrl.init(jax.random.key(seed))
        return jax.tree.map(lambda x: scale * x.astype(jnp.float64), params)


@pytest.fixture(scope="module")
def nb201():
    """The default controller on NAS-Bench-201, and the log-probability and entropy of each
    of the 5^6 action sequences (rows in np.indices order: decision 0 varies slowest)."""
    ctrl = Controller(NB201)
    params = float64_params(ctrl, 0, 5.0)
    every = np.indices((5,) * 6).reshape(6, -1).T
    with jax.enable_x64(True):
        logp, ent = jax.jit(jax.vmap(ctrl.log_prob, in_axes=(None, 0)))(params, every)
    return ctrl, params, every, np.asarray(logp), np.asarray(ent)


def conditionals(joint):
    """Per decision t, P(a_t | a_<t) as an array over (a_0..a_t), from the joint table."""
    out, previous = [], np.ones(())
    for t in range(joint.ndim):
        marginal = joint.sum(axis=tuple(range(t + 1, joint.ndim)))
        out.append(marginal / previous[..., None])
        previous = marginal
    return out


def test_probabilities_of_every_nb201_cell_sum_to_one(nb201):
    _, _, _, logp, _ = nb201
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-12)
    # Far from uniform, and decision 1 depends on decision 0: the checks below see the LSTM.
    p = np.exp(logp)
    assert p.max() / p.min() > 5
    second = conditionals(p.reshape((5,) * 6))[1]
    assert np.ptp(second, axis=0).max() > 0.02


def test_entropy_is_the_sum_of_the_exact_per_step_entropies(nb201):
    _, _, _, logp, ent = nb201
    joint = np.exp(logp).reshape((5,) * 6)
    exact = np.zeros((5,) * 6)
    for t, cond in enumerate(conditionals(joint)):
        h = -(cond * np.log(cond)).sum(-1)  # over (a_0..a_{t-1})
        exact = exact + h.reshape(h.shape + (1,) * (6 - t))
    np.testing.assert_allclose(ent, exact.reshape(-1), rtol=1e-10)


def test_samples_follow_the_policy(nb201):
    ctrl, params, _, logp, ent = nb201
    n = 40_000
    draw = jax.jit(jax.vmap(ctrl.sample, in_axes=(None, 0)))
    actions, sample_logp, sample_ent = map(
        np.asarray, draw(params, jax.random.split(jax.random.key(1), n)))
    index = np.ravel_multi_index(actions.T, (5,) * 6)
    np.testing.assert_allclose(sample_logp, logp[index], rtol=1e-12)
    np.testing.assert_allclose(sample_ent, ent[index], rtol=1e-12)
    p = np.exp(logp)
    # The first three decisions (125 cells): every count within 5 standard errors.
    p3 = p.reshape(125, -1).sum(1)
    c3 = np.bincount(index // 125, minlength=125)
    assert np.all(np.abs(c3 - n * p3) < 5 * np.sqrt(n * p3 * (1 - p3)))
    # All 15,625 cells: Pearson's chi-square within 5 standard deviations of its mean.
    counts = np.bincount(index, minlength=len(p))
    chi2, df = ((counts - n * p) ** 2 / (n * p)).sum(), len(p) - 1
    assert abs(chi2 - df) < 5 * np.sqrt(2 * df)
    # Same key, same sample.
    again = np.asarray(jax.jit(ctrl.sample)(params, jax.random.split(jax.random.key(1), n)[7])[0])
    np.testing.assert_array_equal(again, actions[7])


def test_greedy_and_probabilities_are_the_greedy_conditionals(nb201):
    ctrl, params, _, logp, _ = nb201
    cond = conditionals(np.exp(logp).reshape((5,) * 6))
    greedy = np.asarray(ctrl.greedy(params))
    probs = np.asarray(ctrl.probabilities(params)["cell"])
    for t in range(6):
        row = cond[t][tuple(greedy[:t])]
        np.testing.assert_allclose(probs[t], row, rtol=1e-10)  # NB201: decision t sets edge t
        assert greedy[t] == np.argmax(row)


def _valid_cell_actions():
    """Every action sequence of one tiny DARTS cell type whose inputs differ within a node:
    node 0 reads 2 states, node 1 reads 3; 3 ops each."""
    per_node = [[(i, o, j, q) for i, j in itertools.permutations(range(inputs), 2)
                 for o in range(3) for q in range(3)] for inputs in (2, 3)]
    return np.array([sum(c, ()) for c in itertools.product(*per_node)])


def test_darts_probabilities_of_every_valid_cell_pair_sum_to_one():
    ctrl = Controller(DARTS, lstm_size=4)
    params = float64_params(ctrl, 2, 10.0)
    cell = _valid_cell_actions()
    assert cell.shape == (972, 8)
    log_prob = jax.vmap(ctrl.log_prob, in_axes=(None, 0))

    @jax.jit
    def total(params):
        def block(normal):  # every reduction cell after one normal cell
            both = jnp.concatenate([jnp.broadcast_to(normal, cell.shape), cell], axis=1)
            return jnp.exp(log_prob(params, both)[0]).sum()

        return jax.lax.map(block, jnp.asarray(cell)).sum()

    # 972^2 sequences with distinct inputs: no probability is left for a repeated input.
    np.testing.assert_allclose(total(params), 1.0, rtol=1e-12)
    repeated = np.concatenate([cell[5], cell[0]]).copy()
    repeated[2] = repeated[0]  # node 0 of the normal cell reads one state twice
    assert ctrl.log_prob(params, repeated)[0] == -np.inf
    draw = jax.jit(jax.vmap(ctrl.sample, in_axes=(None, 0)))
    actions = np.asarray(draw(params, jax.random.split(jax.random.key(0), 5000))[0])
    inputs = actions.reshape(-1, 2, 2, 2, 2)[..., 0]  # (sample, cell type, node, pick)
    assert np.all(inputs[..., 0] != inputs[..., 1])
    assert len(np.unique(inputs[:, 0, 1], axis=0)) == 6  # node 1: all 3 x 2 ordered pairs


def test_bad_input():
    ctrl = Controller(NB201, lstm_size=4)
    params = ctrl.init(jax.random.key(0))
    with pytest.raises(JnasError, match=r"`actions` must have shape \(6,\)"):
        ctrl.log_prob(params, np.zeros((2, 6), int))
    with pytest.raises(JnasError, match="`actions` must be integers"):
        ctrl.log_prob(params, np.zeros(6))
    with pytest.raises(JnasError, match="`lstm_size`"):
        Controller(NB201, lstm_size=0)
    with pytest.raises(JnasError, match="`op_tanh_reduce`"):
        Controller(NB201, op_tanh_reduce=-1.0)
