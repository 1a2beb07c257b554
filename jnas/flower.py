"""FedNAS and FedAvg deployed with Flower (`pip install "jnas[flower]"`): every client a
Flower SuperNode on its own machine, the server a ServerApp on the SuperLink's.

A client runs exactly the simulation's compiled local work (`jnas.fednas.FedJob.
client_round`): its partition of the data, its batches and step keys as the simulation
gives them. The strategy averages what the clients send (weights, BatchNorm statistics and,
in a search, alpha) with `jnas.weighted_average` by their sample counts, in client order, so
a deployment ends where `experiments/fednas.py` ends, to float tolerance.

Run config (experiments/flower/pyproject.toml): `flags`, the command line of
experiments/fednas.py that every node parses (the same settings everywhere), and `save`, an
absolute folder where the ServerApp writes `server.npz` (the final global model, one array
per pytree path) and `rounds.jsonl`: per round, its seconds on the server and each client's
mean step metrics, `compute_s` (its local epochs) and `handler_s` (the ClientApp's whole
message handler: building the job, which loads the data, and the local epochs). A node's
`--node-config "partition-id=K"` says which client it is. Every node must have jnas and the
dataset (`--data_dir`): a SuperNode keeps only its own partition of it.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterable

import jax
import numpy as np

from jnas.errors import JnasError

try:
    from flwr.app import (
        Array,
        ArrayRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
except ImportError:  # pragma: no cover - the message names the extra
    raise JnasError('jnas.flower needs Flower: pip install "jnas[flower]"') from None

from jnas import cli, io
from jnas import data as jdata
from jnas.federated import weighted_average
from jnas.fednas import FedJob

WEIGHT_KEY = "num-examples"  # FedAvg's `weighted_by_key`
CLIENT_KEY = "partition-id"


def _job(context: Context) -> FedJob:
    """The run's FedJob from its `flags`, with the compilation cache of the scripts (a
    ClientApp is a new process every round: the cache spares it the compilations)."""
    config, flags = cli.fednas_config("", shlex.split(str(context.run_config["flags"])))
    cli.start(flags)
    return FedJob(config)


def _initial(job: FedJob):
    """The initial global model (the simulation's), its structure and a name per leaf (its
    path)."""
    ds = job.dataset
    initial = jax.device_get(job.learner.init(job.init_key, jdata.preprocess(ds, ds.x[:2])))
    paths, treedef = jax.tree_util.tree_flatten_with_path(initial)
    return initial, treedef, [jax.tree_util.keystr(p) for p, _ in paths]


def to_record(tree, names) -> ArrayRecord:
    return ArrayRecord({n: Array(np.asarray(x)) for n, x in
                        zip(names, jax.tree.leaves(tree), strict=True)})


def from_record(record: ArrayRecord, treedef, names):
    arrays = {k: a.numpy() for k, a in record.items()}
    return jax.tree.unflatten(treedef, [arrays[n] for n in names])


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    job = _job(context)
    _, treedef, names = _initial(job)
    client = int(context.node_config[CLIENT_KEY])
    server = from_record(msg.content["arrays"], treedef, names)
    round_ = int(msg.content["config"]["server-round"])
    compute = time.perf_counter()
    shared, size, metrics = job.client_round(server, client, round_)
    shared = jax.block_until_ready(shared)
    end = time.perf_counter()
    record = MetricRecord({**metrics, WEIGHT_KEY: size, CLIENT_KEY: client,
                           "handler_s": end - start, "compute_s": end - compute})
    content = RecordDict({"arrays": to_record(shared, names), "metrics": record})
    return Message(content=content, reply_to=msg)


class FedNASStrategy(FedAvg):
    """FedAvg whose aggregation is jnas's: the replies in client order, averaged by
    `jnas.weighted_average` with their sample counts, as the simulation averages them."""

    def __init__(self, treedef, names, **kwargs):
        super().__init__(weighted_by_key=WEIGHT_KEY, **kwargs)
        self.treedef, self.names = treedef, names
        self.rounds: list[dict] = []
        self._sent = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._sent = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        valid, errors = self._check_and_log_replies(list(replies), is_train=True)
        if errors:
            raise JnasError(f"round {server_round}: {len(errors)} client(s) failed: "
                            + "; ".join(m.error.reason for m in errors))
        contents = sorted((m.content for m in valid),
                          key=lambda c: int(c["metrics"][CLIENT_KEY]))
        trees = [from_record(c["arrays"], self.treedef, self.names) for c in contents]
        sizes = np.array([float(c["metrics"][WEIGHT_KEY]) for c in contents], np.float32)
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *trees)
        server = jax.device_get(weighted_average(stacked, sizes))
        self.rounds.append({"round": server_round,
                            "seconds": time.perf_counter() - self._sent, "clients": [
            {k: float(v) for k, v in c["metrics"].items()} for c in contents]})
        return to_record(server, self.names), self.train_metrics_aggr_fn(contents, WEIGHT_KEY)


class _PollingGrid:
    """The deployment Grid, polling for replies every `poll` seconds (Flower 1.42's
    `send_and_receive` sleeps 3 s between pulls)."""

    def __init__(self, grid: Grid, poll: float):
        self._grid, self._poll = grid, poll

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        pending = set(self._grid.push_messages(messages))
        replies, end = [], None if timeout is None else time.monotonic() + timeout
        while pending and (end is None or time.monotonic() < end):
            got = list(self._grid.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(self._poll)
        return replies


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    job = _job(context)
    initial, treedef, names = _initial(job)
    clients, save = job.config.clients, str(context.run_config["save"])
    strategy = FedNASStrategy(treedef, names, fraction_train=1.0, fraction_evaluate=0.0,
                              min_train_nodes=clients, min_available_nodes=clients)
    result = strategy.start(
        grid=_PollingGrid(grid, float(context.run_config.get("poll-interval", 0.2))),
        initial_arrays=to_record(initial, names),
        num_rounds=job.config.rounds,
        timeout=float(context.run_config.get("round-timeout", 3600.0)),
    )
    if result.arrays is None or len(strategy.rounds) != job.config.rounds:
        raise JnasError(f"the federation ended after {len(strategy.rounds)} of "
                        f"{job.config.rounds} rounds")
    os.makedirs(save, exist_ok=True)
    io.write_text(os.path.join(save, "rounds.jsonl"),
                  "".join(json.dumps(r) + "\n" for r in strategy.rounds))
    final = {k: a.numpy() for k, a in result.arrays.items()}
    with io.atomic_write(os.path.join(save, "server.npz"), "wb") as f:
        np.savez(f, **final)
