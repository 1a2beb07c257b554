"""ENAS's LSTM controller (Pham et al., ICML 2018): a policy over a space's architectures that
makes the space's decisions (`jnas.sampling.decisions`) one by one, each conditioned on the
earlier ones through the LSTM's state.

At each decision the LSTM takes one step and a head turns its output `h` into logits:

- an op decision: `h @ w_soft + b_soft` over the op options;
- an input decision (spaces whose nodes choose inputs, DARTS): attention over the states the
  node may read, `v . tanh(W1 anchor_j + W2 h)`, where a cell input's anchor is the LSTM
  output of one of the steps that open the cell type, and a node's anchor the output of one
  more step after its last op.

then `logits /= temperature` (if set) and `logits = c * tanh(logits)` with `c =
tanh_constant` for inputs and `tanh_constant / op_tanh_reduce` for ops (if `tanh_constant`
is set); options the space forbids (an input the node already reads) are masked out. The next
step's input is the chosen op's embedding, the chosen input's anchor (zeros for a cell input),
or the learned start embedding `g_emb` at the start of each cell type (and of each node of a
space that chooses inputs). Cell types follow each other in one sequence (ENAS samples the
reduction cell from the normal cell's final state, micro_controller.py L79-80).

Defaults and where they come from (melodyguan/enas 4bcfd73): a 1-layer LSTM of 64 units
(src/cifar10/main.py L153-154), `tanh_constant` 1.10 and `op_tanh_reduce` 2.5
(scripts/cifar10_micro_search.sh L36-37), no temperature (main.py L75), every weight drawn
from U(-0.1, 0.1) (src/cifar10/micro_controller.py L86). The decision order and the heads
follow micro_controller.py L135-201. Differences: the decisions come in
`jnas.sampling.decisions`' order (input, op, input, op per node; ENAS: input, input, op, op);
a node's two inputs are distinct (ENAS may pick one twice); the op bias starts at zero (ENAS
starts it at 10 for its first two ops and adds a fixed bias to the normal cell's ops, L100-109,
a preference for ENAS's separable convolutions that names no op of another op list); the LSTM
is Flax's `LSTMCell` (a bias on its gates; ENAS's has none, src/common_ops.py L5-14).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnas import sampling
from jnas.errors import JnasError


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class ControllerNet(nn.Module):
    """The controller's network: run it with a `choose(t, log_probs) -> action` that picks
    each decision (sampling, teacher forcing, argmax). Returns `(actions (D,) int32,
    log_prob, entropy, probs)`: the sum over the decisions of the chosen options'
    log-probabilities and of the per-decision entropies, and each decision's probabilities
    (a list of D arrays of its options)."""

    decisions: tuple[sampling.Decision, ...]
    cell_inputs: int  # the states a cell starts from
    num_ops: int  # op options per op decision
    lstm_size: int
    temperature: float | None
    tanh_constant: float | None
    op_tanh_reduce: float

    def setup(self):
        init, size = _uniform(0.1), self.lstm_size
        self.lstm = nn.LSTMCell(size, kernel_init=init, recurrent_kernel_init=init)
        self.g_emb = self.param("g_emb", init, (size,))
        self.w_emb = self.param("w_emb", init, (self.num_ops, size))
        self.w_soft = self.param("w_soft", init, (size, self.num_ops))
        self.b_soft = self.param("b_soft", nn.initializers.zeros, (self.num_ops,))
        if any(d.kind == "input" for d in self.decisions):
            self.w_attn_1 = self.param("w_attn_1", init, (size, size))
            self.w_attn_2 = self.param("w_attn_2", init, (size, size))
            self.v_attn = self.param("v_attn", init, (size,))

    def _scale(self, logits, reduce: float = 1.0):
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant / reduce * jnp.tanh(logits)
        return logits

    def __call__(self, choose: Callable):
        choosing_inputs = any(d.kind == "input" for d in self.decisions)
        zeros = jnp.zeros(self.lstm_size, self.g_emb.dtype)
        carry, x = (zeros, zeros), self.g_emb
        actions, probs = [], []
        log_prob = entropy = jnp.zeros((), self.g_emb.dtype)
        anchors, keys = [], []
        for t, d in enumerate(self.decisions):
            previous = self.decisions[t - 1] if t else None
            if previous is None or previous.cell_type != d.cell_type:
                x = self.g_emb
                if choosing_inputs:  # the cell inputs' anchors
                    anchors, keys = [], []
                    for _ in range(self.cell_inputs):
                        carry, h = self.lstm(carry, x)
                        anchors.append(zeros)
                        keys.append(h @ self.w_attn_1)
            elif choosing_inputs and previous.node != d.node:  # the finished node's anchor
                carry, h = self.lstm(carry, x)
                anchors.append(h)
                keys.append(h @ self.w_attn_1)
                x = self.g_emb
            carry, h = self.lstm(carry, x)
            if d.kind == "input":
                if d.options != len(anchors):
                    raise JnasError(f"node {d.node} reads {d.options} states, but the cell "
                                    f"has {len(anchors)} before it: an unknown cell layout")
                logits = jnp.tanh(jnp.stack(keys) + h @ self.w_attn_2) @ self.v_attn
                logits = self._scale(logits)
            else:
                logits = self._scale(h @ self.w_soft + self.b_soft, self.op_tanh_reduce)
            mask = sampling.allowed(self.decisions, actions, t)
            logp = jax.nn.log_softmax(jnp.where(mask, logits, -jnp.inf))
            p = jnp.exp(logp)
            action = jnp.asarray(choose(t, logp), jnp.int32)
            actions.append(action)
            probs.append(p)
            log_prob = log_prob + logp[action]
            # Masked options have p = 0 and log p = -inf: they add 0, not nan.
            entropy = entropy - jnp.sum(jnp.where(mask, p * jnp.where(mask, logp, 0.0), 0.0))
            x = jnp.stack(anchors)[action] if d.kind == "input" else self.w_emb[action]
        return jnp.stack(actions), log_prob, entropy, probs


class Controller:
    """ENAS's LSTM controller over `space`'s decisions (module docstring: the network and
    where its defaults come from). Parameters are an explicit pytree; every method is pure
    and jit-able, and `sample` draws from `key` alone.

    Example:
      >>> ctrl = Controller(space_class("nas-bench-201")())
      >>> params = ctrl.init(jax.random.key(0))
      >>> actions, log_prob, entropy = jax.jit(ctrl.sample)(params, jax.random.key(1))
      >>> arch = sampling.architecture(ctrl.space, jax.device_get(
      ...     sampling.to_ops(ctrl.space, actions)))
    """

    def __init__(self, space, *, lstm_size: int = 64, temperature: float | None = None,
                 tanh_constant: float | None = 1.10, op_tanh_reduce: float = 2.5):
        if isinstance(lstm_size, bool) or not isinstance(lstm_size, int) or lstm_size <= 0:
            raise JnasError(f"`lstm_size` must be a positive int, got {lstm_size!r}")
        for name, value in (("temperature", temperature), ("tanh_constant", tanh_constant),
                            ("op_tanh_reduce", op_tanh_reduce)):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise JnasError(f"`{name}` must be a positive number (or None where allowed: "
                                f"no temperature, no tanh), got {value!r}")
        self.space = space
        self.decisions = sampling.decisions(space)
        self.net = ControllerNet(
            decisions=self.decisions, cell_inputs=len(space.incoming()[0]),
            num_ops=len(sampling.op_columns(space)), lstm_size=lstm_size,
            temperature=temperature, tanh_constant=tanh_constant,
            op_tanh_reduce=op_tanh_reduce,
        )

    def init(self, key):
        """The controller's parameters, drawn from `key` (U(-0.1, 0.1), ENAS's)."""
        return self.net.init(key, lambda t, logp: jnp.argmax(logp))

    def sample(self, params, key):
        """`(actions (D,) int32, log_prob (), entropy ())` of an architecture drawn decision by
        decision: `log_prob` = sum_t log p(a_t | a_<t), `entropy` = sum_t H(p(. | a_<t))."""
        keys = jax.random.split(key, len(self.decisions))
        return self.net.apply(params, lambda t, logp: jax.random.categorical(keys[t], logp))[:3]

    def log_prob(self, params, actions):
        """`(log_prob (), entropy ())` of given `actions` (teacher forcing), as `sample` returns
        them: the `log_prob_fn` of `jnas.reinforce_grad`. An action outside its allowed
        options (e.g. an input picked twice) has log-probability -inf."""
        if np.shape(actions) != (len(self.decisions),):
            raise JnasError(f"`actions` must have shape ({len(self.decisions)},), one per "
                            f"decision of the {self.space.name} space, got {np.shape(actions)}")
        if not jnp.issubdtype(jnp.result_type(actions), jnp.integer):
            raise JnasError(f"`actions` must be integers, got {jnp.result_type(actions)}")
        return self.net.apply(params, lambda t, logp: actions[t])[1:3]

    def greedy(self, params):
        """`(D,) int32`: the most likely option at each decision, given the earlier ones."""
        return self.net.apply(params, lambda t, logp: jnp.argmax(logp))[0]

    def probabilities(self, params) -> dict[str, jax.Array]:
        """{cell type: (edges, primitives)}: along the greedy rollout, each edge's row is the
        distribution of the op decision that set it, over the space's primitives (0 for
        'none' where inputs are chosen); an edge that the rollout does not take has a zero
        row. These are conditionals given the earlier greedy decisions, not marginals."""
        actions, _, _, probs = self.net.apply(params, lambda t, logp: jnp.argmax(logp))
        columns = jnp.asarray(sampling.op_columns(self.space))
        n = len(self.space.primitives)
        out = {t: jnp.zeros((self.space.num_edges(), n), probs[0].dtype)
               for t in self.space.cell_types()}
        incoming, row = self.space.incoming(), None
        for t, d in enumerate(self.decisions):
            rows = jnp.asarray(incoming[d.node])
            if d.kind == "input":
                row = rows[actions[t]]
                continue
            if self.space.sample_inputs is None:
                row = rows[d.pick]
            out[d.cell_type] = out[d.cell_type].at[row].set(
                jnp.zeros(n, probs[t].dtype).at[columns].set(probs[t]))
        return out
