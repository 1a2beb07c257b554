"""Search without weight sharing over a benchmark table: every sampled cell is "trained" by
looking up its accuracy (`jnas.benchmark`), as NAS-Bench-201's baselines do (Dong & Yang,
ICLR 2020; D-X-Y/AutoDL-Projects f46486e, exps/NAS-Bench-201-algos/).

Two algorithms (`ALGOS`):

- reinforce: ENAS's LSTM controller (`jnas.controller.Controller`) trained by REINFORCE
  (`jnas.reinforce_grad`) with the table's metric as the reward, as NAS-Bench-201's REINFORCE
  baseline (reinforce.py L163-213): draw, look up, update, and answer the best cell drawn
  (L213). The reward is the metric as a fraction (percent / 100), as ENAS's reward is the
  validation accuracy as a fraction (melodyguan/enas 4bcfd73, src/cifar10/micro_controller.py
  L233-235), so that its entropy weight keeps its meaning. Adam with ENAS's settings:
  learning rate 0.0035 (scripts/cifar10_micro_search.sh L35), beta1 0, epsilon 1e-3
  (src/utils.py L218); baseline decay 0.99 (src/cifar10/main.py L72) and entropy weight 1e-4
  (cifar10_micro_search.sh L30). The baseline starts at the first update's mean reward, where
  NAS-Bench-201's bias-corrected moving average also starts (reinforce.py L73-89, L195); ENAS
  starts it at 0 (micro_controller.py L241). The controller's logits are unbounded by
  default (`tanh_constant` 0), as the benchmark's policy is a free softmax (reinforce.py
  L40-70): ENAS's bound 1.1 * tanh (its ops' 0.44 * tanh) keeps every op's probability within
  [0.09, 0.38], which serves ENAS's shared weights (every op keeps being trained) but caps
  what a search without them can learn: on bench/nb201_table.py's synthetic table, 500
  samples found the best cell for 10 of 10 seeds unbounded, 2 of 10 bounded (random search:
  1 of 10).
- random: cells drawn uniformly (`jnas.sampling.uniform_actions`); the best one drawn
  (RANDOM.py L96-105).

Differences from the published baselines: NAS-Bench-201's REINFORCE policy is one learned
logit vector per edge (reinforce.py L30-70; Adam lr 0.001, moving-average momentum 0.9,
scripts-search/NAS-Bench-201-algos/REINFORCE.sh L2, L35), not an LSTM; its reward is the
12-epoch validation accuracy and its budget 12,000 simulated seconds of that training
(R_EA.py L44-57, REINFORCE.sh L34), while here the reward is one table column (`metric`) and
the budget a number of samples (500 by default, our choice). With a table of the final test
accuracies the search is an oracle search, which bounds what the published searches can find.

`run_table_search(config)` writes into `config.save`: `config.json`, `history.jsonl` (one
line per sample: its number from 1, architecture string, reward and the best reward so far),
`result.json` and `progress.png` (the best reward so far against the samples). Rerunning the
same command resumes: the run is replayed from its first sample with the rewards of
`history.jsonl` (every draw and update is a function of the seed and the sample index), the
replayed cells are checked against the recorded ones, and the run continues; a larger
`samples` extends a finished run exactly as a longer run would have gone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jnas import sampling
from jnas.benchmark import PREFIX, Benchmark
from jnas.config import check_common, option
from jnas.controller import Controller
from jnas.errors import JnasError
from jnas.io import WRITING, write_json, write_text
from jnas.loop import check_resumable, config_dict, make_run_folder
from jnas.plotting import plot_curves
from jnas.spaces import SPACES, nb201, space_class
from jnas.transforms import reinforce_grad

# Settings that may change when a run is resumed: where it is, and how long it goes on.
MAY_DIFFER = ("save", "samples")


class Algo(NamedTuple):
    """An `algo`, jitted: `init(key) -> state`, `draw(state, key) -> (batch_size, D)
    actions`, `update(state, actions, rewards) -> state` (rewards in percent)."""

    init: Any
    draw: Any
    update: Any


class ReinforceState(NamedTuple):
    params: Any
    opt_state: Any
    baseline: jax.Array  # NaN until the first update


def _reinforce(config, space):
    ctrl = Controller(space, tanh_constant=config.tanh_constant or None)
    opt = optax.adam(config.learning_rate, b1=0.0, eps=1e-3)  # ENAS: src/utils.py L218

    def init(key):
        params = ctrl.init(key)
        return ReinforceState(params, opt.init(params), jnp.float32(jnp.nan))

    def draw(state, key):
        keys = jax.random.split(key, config.batch_size)
        return jax.vmap(ctrl.sample, in_axes=(None, 0))(state.params, keys)[0]

    def update(state, actions, rewards):
        rewards = rewards / 100  # percent -> a fraction, ENAS's reward
        baseline = jnp.where(jnp.isnan(state.baseline), jnp.mean(rewards), state.baseline)
        _, grads, baseline = reinforce_grad(
            ctrl.log_prob, state.params, actions, rewards, baseline,
            baseline_decay=config.baseline_decay, entropy_weight=config.entropy_weight)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return ReinforceState(optax.apply_updates(state.params, updates), opt_state, baseline)

    return init, draw, update


def _random(config, space):
    def draw(state, key):
        keys = jax.random.split(key, config.batch_size)
        return jax.vmap(lambda k: sampling.uniform_actions(space, k))(keys)

    return (lambda key: (), draw, lambda state, actions, rewards: state)


ALGOS = {
    "reinforce": ("ENAS's LSTM controller trained by REINFORCE on the table's metric", _reinforce),
    "random": ("cells drawn uniformly at random", _random),
}


@dataclasses.dataclass(frozen=True)
class TableSearchConfig:
    """One search over a benchmark table (module docstring: the algorithms, their defaults
    and where they come from)."""

    space: str = option("nas-bench-201", "the search space; a benchmark table covers "
                        "NAS-Bench-201's cells", choices=tuple(SPACES))
    algo: str = option("reinforce", "; ".join(f"{k}: {v[0]}" for k, v in ALGOS.items()),
                       choices=tuple(ALGOS))
    benchmark: str | None = option(None, "the benchmark table (CSV with an 'arch' column) or "
                                   "NATS-Bench topology file whose metric is the reward "
                                   "(required to run)")
    metric: str = option("cifar10_test", "the benchmark column that is the reward (percent)")
    samples: int = option(500, "architectures drawn (and looked up) in all")
    batch_size: int = option(1, "architectures drawn per controller update (NAS-Bench-201's "
                             "REINFORCE: 1)")
    learning_rate: float = option(0.0035, "the controller's Adam learning rate (ENAS)")
    baseline_decay: float = option(0.99, "decay of the reward's moving-average baseline (ENAS)")
    entropy_weight: float = option(1e-4, "weight of the policy's entropy in the controller's "
                                   "objective (ENAS)")
    tanh_constant: float = option(0.0, "the bound c of the controller's logits, c * tanh "
                                  "(ENAS: 1.1, its ops' c / 2.5); 0: unbounded, as "
                                  "NAS-Bench-201's REINFORCE policy")
    seed: int = option(0, "random seed: the controller's initialisation and every draw")
    save: str = option("runs/table_search", "output folder; rerun to resume")

    def __post_init__(self):
        check_common(self)
        if self.space != nb201.NB201Space.name:
            raise JnasError(
                f"`space` {self.space} has no benchmark table to search: only NAS-Bench-201's "
                f"cells are tabulated; use `space` {nb201.NB201Space.name}"
            )
        if self.algo not in ALGOS:
            raise JnasError(f"`algo` must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        for name in ("samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise JnasError(f"`{name}` must be a positive int, got {value!r}")
        if self.learning_rate <= 0:
            raise JnasError(f"`learning_rate` must be positive, got {self.learning_rate}")
        if not 0 <= self.baseline_decay <= 1:
            raise JnasError(f"`baseline_decay` must lie in [0, 1], got {self.baseline_decay}")
        for name in ("entropy_weight", "tanh_constant"):
            if getattr(self, name) < 0:
                raise JnasError(f"`{name}` must be >= 0, got {getattr(self, name)}")


def algo(config: TableSearchConfig) -> Algo:
    """The jitted (init, draw, update) of `config.algo` on `config.space`."""
    make = ALGOS[config.algo][1]
    return Algo(*map(jax.jit, make(config, space_class(config.space)())))


def read_history(path: str) -> list[dict]:
    """The complete lines of `history.jsonl` (a line cut short by a crash is dropped)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def run_table_search(config: TableSearchConfig, progress: bool = True) -> dict:
    """Run (or resume) the search into `config.save`; returns result.json's contents."""
    if not config.benchmark:
        raise JnasError("`benchmark` is required: give a CSV table with an 'arch' column and "
                        "the `metric` column, or a NATS-Bench topology file")
    space = space_class(config.space)()
    benchmark = Benchmark.load(config.benchmark)
    if config.metric not in benchmark.columns:
        raise JnasError(f"`metric` {config.metric!r} is not a column of the benchmark "
                        f"{config.benchmark!r}; its columns: {', '.join(benchmark.columns)}")
    make_run_folder(config.save)
    config_path = os.path.join(config.save, "config.json")
    history_path = os.path.join(config.save, "history.jsonl")
    done = read_history(history_path)
    if done:
        check_resumable(config, config_path, MAY_DIFFER)
    with WRITING:  # the complete lines only, then appended to
        write_json(config_path, config_dict(config))
        write_text(history_path, "".join(json.dumps(r) + "\n" for r in done))

    alg = algo(config)
    to_ops = jax.jit(jax.vmap(lambda a: sampling.to_ops(space, a)))
    root = jax.random.key(config.seed)
    state = alg.init(jax.random.fold_in(root, 0))
    rows = done[:config.samples]
    best = -np.inf
    bar = tqdm(total=config.samples, desc=f"{config.algo} over {config.metric}",
               disable=not progress)
    for i, start in enumerate(range(0, config.samples, config.batch_size)):
        actions = alg.draw(state, jax.random.fold_in(root, i + 1))
        count = min(config.batch_size, config.samples - start)
        ops = jax.device_get(to_ops(actions[:count]))
        rewards, new = [], []
        for k in range(count):
            arch = space.benchmark_key(sampling.architecture(space, {
                t: o[k] for t, o in ops.items()}))
            sample = start + k + 1
            if sample <= len(rows):  # replayed: the recorded draw and reward
                if rows[sample - 1]["arch"] != arch:
                    raise JnasError(
                        f"{config.save} records {rows[sample - 1]['arch']!r} as sample "
                        f"{sample}, but this run draws {arch!r} there: it was written by "
                        "another version or machine. Pass a new `save` to start afresh."
                    )
                reward = rows[sample - 1]["reward"]
            else:
                reward = benchmark.lookup(arch)[PREFIX + config.metric]
            best = max(best, reward)
            rewards.append(reward)
            if sample > len(rows):
                new.append({"sample": sample, "arch": arch, "reward": reward, "best": best})
        if new:
            with WRITING, open(history_path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in new))
            rows.extend(new)
        bar.update(count)
        bar.set_postfix(best=f"{best:.2f}")
        if start + count < config.samples:
            state = alg.update(state, actions, jnp.asarray(rewards, jnp.float32))
    bar.close()
    return _finish(config, benchmark, rows)


def _finish(config: TableSearchConfig, benchmark: Benchmark, rows: list[dict]) -> dict:
    """result.json and progress.png of the run's samples."""
    top = max(rows, key=lambda r: (r["reward"], -r["sample"]))  # the first best
    result = {
        "algo": config.algo, "samples": len(rows), "metric": config.metric,
        "best_arch": top["arch"], "best_sample": top["sample"], "best": top["reward"],
        "benchmark": benchmark.lookup(top["arch"]),
    }
    if config.benchmark.lower().endswith(".csv"):  # in memory: the table's best is cheap
        table_arch, table_best = benchmark.best(config.metric)
        result.update(table_best_arch=table_arch, table_best=table_best,
                      regret=table_best - result["best"])
    with WRITING:
        write_json(os.path.join(config.save, "result.json"), result)
        plot_curves(rows, os.path.join(config.save, "progress.png"), "sample", ["best"],
                    title=f"{config.algo}: best {config.metric} so far")
    return result
