"""FedNAS (He, Annavaram & Avestimehr, 2020) and FedAvg as a job of the run loop, with every
client on one array axis.

`FedConfig.local` says what a client does each round: a `SearchConfig` (FedNAS's stage
"search": MiLeNAS steps on the supernet, the server averaging weights and alpha) or a
`TrainConfig` (stage "train": FedAvg training of a fixed architecture's network, the
paper's second stage and its baseline). Its `epochs` are the local epochs of a round.

What a round does, and where it follows the reference (chaoyanghe/FedNAS, the code of the
paper; FedML's FedNAS is the same code):

- The training set is partitioned over the clients (`jnas.partition`); each client splits
  its part into a weights half and a validation half (main.py L155-157: 50/50). The search's
  architecture step reads the validation half; FedAvg training trains on the weights half
  too, so the two stages see the same data.
- Every client starts the round from the server's weights, BatchNorm statistics and alpha
  with fresh optimizer states and the learning rate restarting its cosine over the local
  epochs: the reference builds its SGD, Adam and scheduler anew in every round
  (FedNASTrainer.search L57-65).
- The server averages what the clients send (weights, BatchNorm statistics, alpha) weighted
  by each client's sample count over all (FedNASAggregator L90-132: the whole state_dict,
  running statistics included, and alpha, by `local_sample_number / all_train_data_num`).
- Every client runs the same number of steps per local epoch: the batches of a client with
  the mean amount of data. A client with more data sees part of it in a local epoch, one
  with less sees it more than once; the sample counts still weight the average. (The
  reference runs each client through its own data, so its larger clients take more steps.
  With equal steps no padded step is computed under the vmap.)

Outputs in `save`, every round: `metrics.jsonl` (train loss and accuracy, the global
model's validation loss and accuracy on the union of the clients' validation halves and on
each client's, and for FedAvg training on the test set), `curves.png`, `clients.png`, for a
search the derived architecture's `genotype.json`, `genotype.png`, `alphas.npz`,
`alphas.png`; once: `partition.png` and `partition.txt` (the class counts per client);
`checkpoints/<round>/`, `config.json`. Rerunning with the same `save` resumes from the last round.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jnas import data as jdata
from jnas import loop
from jnas.algorithms import algorithm
from jnas.config import option
from jnas.errors import JnasError
from jnas.evaluation import TrainConfig, Trainer, TrainState, load_test_set
from jnas.federated import broadcast_clients, client_steps, weighted_average
from jnas.io import write_text
from jnas.partition import PARTITIONS, check_partition_settings, class_counts, counts_table
from jnas.partition import partition as make_partition
from jnas.plotting import plot_client_accuracy, plot_curves, plot_partition
from jnas.runner import write_architecture
from jnas.search import Search, SearchConfig, SearchState, trains_alpha
from jnas.sharding import CLIENT_AXIS, DATA_AXIS, ShardedStep, client_mesh, is_main_process
from jnas.spaces import space_class

# SearchConfig settings a federated search does not read: refused when set, not ignored.
UNFEDERATED = ("track_hessian", "early_stop", "benchmark")
TRAIN_HALF = 0.5  # FedNAS main.py L155: a client's examples, half for weights, half validation


@dataclasses.dataclass(frozen=True)
class FedConfig:
    """A federated run: `local` (a SearchConfig: FedNAS's search; a TrainConfig: FedAvg
    training) is every client's local work per round, its `epochs` the local epochs; `save`,
    `seed`, `devices` and the data are `local`'s. Defaults are FedNAS's (16 clients, 50
    rounds, FedML's Dirichlet 0.5 label skew)."""

    local: SearchConfig | TrainConfig
    clients: int = option(16, "clients, each holding its own part of the training set")
    rounds: int = option(50, "communication rounds")
    partition: str = option("dirichlet", "how the training set is shared out: iid, dirichlet "
                            "(label skew) or shards (two classes' shards per client)",
                            choices=tuple(PARTITIONS))
    dirichlet_alpha: float = option(0.5, "Dirichlet concentration of the label skew (smaller: "
                                    "fewer classes per client)")
    min_client_samples: int = option(10, "dirichlet: redraw until every client holds at least "
                                     "this many examples (FedML: 10)")

    def __post_init__(self):
        if type(self.local) not in LEARNERS:
            raise JnasError("`local` must be a SearchConfig (FedNAS) or a TrainConfig (FedAvg), "
                            f"got {type(self.local).__name__}")
        check_partition_settings(self.partition, self.clients, self.dirichlet_alpha,
                                 self.min_client_samples)
        if self.rounds < 1:
            raise JnasError(f"`rounds` must be at least 1, got {self.rounds}")
        for name in UNFEDERATED:
            if getattr(self.local, name, None):
                raise JnasError(f"`{name}` is not part of a federated search; leave it unset")
        if isinstance(self.local, SearchConfig) and not trains_alpha(
                algorithm(self.local.algorithm)):
            raise JnasError(f"`algorithm` {self.local.algorithm} trains no alpha, which a "
                            "federated search averages and derives its cell from")

    @property
    def save(self) -> str:
        return self.local.save


class SearchLearner:
    """FedNAS's local work: search steps (`jnas.search.Search`), each on a batch of the
    client's weights half and one of its validation half; it shares the weights, the
    BatchNorm statistics and alpha."""

    inputs = 2
    step_name = "search steps"
    files = ", genotype.json, genotype.png, alphas.npz, alphas.png"

    def __init__(self, config: SearchConfig, num_classes, steps_per_epoch, image_size, mesh):
        del image_size
        self.search = Search(config, num_classes, steps_per_epoch, mesh)
        self.step = self.search._step

    @staticmethod
    def train_portion(config: SearchConfig) -> float:
        return config.train_portion

    @staticmethod
    def eval_sets(config: SearchConfig, train) -> dict:
        return {}

    def init(self, key, sample_x):
        return self.share(self.search.init(key, sample_x))

    def start(self, server) -> SearchState:
        s, alpha = self.search, server["alpha"]
        return SearchState(jnp.zeros((), jnp.int32), server["params"], server["batch_stats"],
                           alpha, s.w_tx.init(server["params"]), s.alpha_tx.init(alpha),
                           s.relaxation.init_state(alpha))

    @staticmethod
    def share(state) -> dict:
        return {"params": state.params, "batch_stats": state.batch_stats, "alpha": state.alpha}

    def eval(self, server, batch):
        return self.search._eval_step(self.start(server), batch)

    def row(self, server) -> dict:
        self.arch = self.search.derive(jax.device_get(server["alpha"]))
        return {"genotype": self.search.space.to_dict(self.arch)}

    def write(self, save, server, rows):
        s = self.search
        write_architecture(save, s.space, s.relaxation, server["alpha"], self.arch,
                           f"round {rows[-1]['round']}")

    @staticmethod
    def title(config: SearchConfig) -> str:
        return f"FedNAS search ({config.algorithm})"

    def result(self, row) -> str:
        space = self.search.space
        return f"derived architecture: {space.to_string(space.from_dict(row['genotype']))}"


class TrainLearner:
    """FedAvg's local work: training steps of a fixed architecture's network
    (`jnas.evaluation.Trainer`) on the client's weights half; it shares the weights and the
    BatchNorm statistics."""

    inputs = 1
    step_name = "training steps"
    files = ""

    def __init__(self, config: TrainConfig, num_classes, steps_per_epoch, image_size, mesh):
        self.trainer = Trainer(config, num_classes, steps_per_epoch, image_size, mesh)
        self.step = self.trainer._step

    @staticmethod
    def train_portion(config: TrainConfig) -> float:
        return TRAIN_HALF

    @staticmethod
    def eval_sets(config: TrainConfig, train) -> dict:
        """The test set, as experiments/train.py's: the paper reports FedAvg's test accuracy."""
        return {"test": load_test_set(config, train)}

    def init(self, key, sample_x):
        return self.share(self.trainer.init(key, sample_x))

    def start(self, server) -> TrainState:
        params = server["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, server["batch_stats"],
                          self.trainer.tx.init(params))

    @staticmethod
    def share(state) -> dict:
        return {"params": state.params, "batch_stats": state.batch_stats}

    def eval(self, server, batch):
        return self.trainer._eval_step(self.start(server), batch)

    def row(self, server) -> dict:
        return {}

    def write(self, save, server, rows):
        pass

    @staticmethod
    def title(config: TrainConfig) -> str:
        return f"FedAvg training of {config.arch}"

    def result(self, row) -> str:
        return f"trained architecture: {self.trainer.config.arch}"


LEARNERS = {SearchConfig: SearchLearner, TrainConfig: TrainLearner}


STAGES = {"search": SearchConfig, "train": TrainConfig}
FEDNAS_NETWORK = {"init_channels": 16, "layers": 8}  # main.py L60-61
# Both stages: 5 local epochs of batch 64 (the paper), seed 0 (main.py L212), so that the
# search and FedAvg training of its cell see the same partition.
FEDNAS_LOCAL = {"epochs": 5, "batch_size": 64, "seed": 0}


def local_defaults(stage: str, space: str = "darts", **overrides):
    """FedNAS's local settings for `stage` ("search" or "train") on `space`, then
    `overrides`: 5 local epochs of batch 64 (the paper), seed 0, the reference's learning rates
    (main.py L60-74: DARTS's search settings, lr 0.025 cosine to 0.001 within a round) and,
    for training, its network (NetworkCIFAR with C=16, 8 cells, no auxiliary head, cutout 16,
    no drop path). The search is MiLeNAS (lambda 1: main.py L73-74)."""
    if stage not in STAGES:
        raise JnasError(f"`stage` must be one of {', '.join(STAGES)}, got {stage!r}")
    if stage == "search":
        base = SearchConfig.published("milenas", space, save="runs/fednas", **FEDNAS_LOCAL)
    else:
        # The network's size where the space has it (NAS-Bench-201 has no `layers`).
        reads = {f.name for f in dataclasses.fields(space_class(space))}
        network = {k: v for k, v in FEDNAS_NETWORK.items() if k in reads}
        base = TrainConfig.published(space, learning_rate=0.025, learning_rate_min=0.001,
                                     auxiliary_weight=0.0, drop_path_prob=0.0,
                                     save="runs/fedavg", **network, **FEDNAS_LOCAL)
    return dataclasses.replace(base, **overrides)


class FedState(NamedTuple):
    server: Any  # what the clients share: the global model (and alpha)
    clients: Any  # the clients' local states within a round, stacked on a leading axis


class Federation:
    """A learner's federated pieces for `clients` clients, compiled over a (clients, data)
    mesh: `start` (server -> every client's fresh state), `local_epoch` (every client's
    steps of one local epoch), `aggregate` (the weighted average of what they share) and
    `eval` (the server's model on a batch)."""

    def __init__(self, learner, clients: int, mesh):
        self.learner, self.clients = learner, clients
        per_client = PartitionSpec(CLIENT_AXIS)
        batches = PartitionSpec(CLIENT_AXIS, None, DATA_AXIS)  # (clients, steps, batch, ...)
        self.start = ShardedStep(self._start, mesh, out_specs=per_client)
        self.local_epoch = ShardedStep(self._local_epoch, mesh,
                                       specs={0: per_client, 1: batches, 2: per_client},
                                       out_specs=(per_client, PartitionSpec()))
        self.aggregate = ShardedStep(self._aggregate, mesh, specs={0: per_client})
        self.eval = ShardedStep(learner.eval, mesh, batch_argnums=(1,))
        self.steps = (self.start, self.local_epoch, self.aggregate, self.eval)

    def _start(self, server):
        return broadcast_clients(self.learner.start(server), self.clients)

    def _local_epoch(self, states, batches, keys):
        states, metrics = client_steps(self.learner.step, states, (*batches, keys))
        return states, jax.tree.map(jnp.mean, metrics)

    def _aggregate(self, states, weights):
        return weighted_average(jax.vmap(self.learner.share)(states), weights)


class FedJob:
    """A federated run: rounds of local epochs; the loop's step is one local epoch of every
    client at once."""

    unit = "round"
    loss_key = "train_loss"
    may_differ = loop.RUN_FIELDS
    hint = "Lower `learning_rate` (or `arch_learning_rate`), or check the data for NaNs."

    def __init__(self, config: FedConfig):
        if jax.process_count() > 1:
            raise JnasError("the federated simulation runs every client in one process; to "
                            "run clients on several machines use its Flower deployment "
                            "(jnas.flower)")
        self.config = config
        local = config.local
        dataset = jdata.load_dataset(local.dataset, local.data_dir, split="train")
        self.dataset = dataset
        parts = make_partition(dataset.y, config.clients, config.partition, seed=local.seed,
                               dirichlet_alpha=config.dirichlet_alpha,
                               min_samples=config.min_client_samples)
        self.counts = class_counts(dataset.y, parts, dataset.num_classes)
        self.sizes = np.array([len(p) for p in parts], np.float32)
        learner_class = LEARNERS[type(local)]
        self.halves = [jdata.search_split(dataset.subset(p), learner_class.train_portion(local))
                       for p in parts]
        smallest = min(min(len(w), len(v)) for w, v in self.halves)
        if smallest < local.batch_size:
            k = min(range(config.clients), key=lambda k: min(map(len, self.halves[k])))
            raise JnasError(
                f"client {k} holds {int(self.sizes[k])} examples, {smallest} in the smaller of "
                f"its two halves: fewer than `batch_size` {local.batch_size}. Lower "
                f"`batch_size` to at most {smallest}, use fewer `clients`, or raise "
                "`min_client_samples`"
            )
        self.eval_sets = learner_class.eval_sets(local, dataset)
        weights_half = sum(len(w) for w, _ in self.halves)
        self.steps_per_epoch = max(1, weights_half // config.clients // local.batch_size)
        self.mesh = client_mesh(local.devices, config.clients, local.batch_size)
        self.learner = learner_class(local, dataset.num_classes, self.steps_per_epoch,
                                     dataset.x.shape[1], self.mesh)
        self.step_name = f"local epoch ({self.learner.step_name} of every client)"
        self.fed = Federation(self.learner, config.clients, self.mesh)
        self._alone = None  # a one-client Federation, for `client_round`
        self.steps = self.fed.steps
        self.total_steps = config.rounds * local.epochs
        self.init_key, self.step_key = jax.random.split(jax.random.key(local.seed))

    def init(self) -> FedState:
        save, ds = self.config.save, self.dataset
        if is_main_process():
            os.makedirs(save, exist_ok=True)
            table = counts_table(self.counts)
            write_text(os.path.join(save, "partition.txt"), table + "\n")
            plot_partition(self.counts, os.path.join(save, "partition.png"),
                           title=f"{self.config.partition} partition of {ds.name}, "
                           f"{self.config.clients} clients")
            print(f"examples per class and client ({self.config.partition} partition):\n"
                  f"{table}", flush=True)
        server = self.learner.init(self.init_key, jdata.preprocess(ds, ds.x[:2]))
        return FedState(server, self.fed.start(server))

    def units(self, done):
        return range(done + 1, self.config.rounds + 1)

    def steps_before(self, unit):
        return unit * self.config.local.epochs

    def client_batches(self, client: int, round: int, local_epoch: int) -> tuple:
        """The client's batches of one local epoch, one array per half a step reads (steps,
        batch, ...): its stream of shuffled epochs, continued across rounds."""
        local, n = self.config.local, self.steps_per_epoch
        first = ((round - 1) * local.epochs + local_epoch) * n
        halves = self.halves[client][: self.learner.inputs]
        return tuple(
            jax.tree.map(lambda *xs: np.stack(xs), *_stream(
                half, local.batch_size, local.seed, 2 * client + h, 2 * self.config.clients,
                first, n))
            for h, half in enumerate(halves)
        )

    def keys(self, clients, round: int, local_epoch: int):
        """The step keys (clients, steps): one per client, round and step."""
        n = self.steps_per_epoch
        base = jax.random.fold_in(self.step_key, round)
        steps = jnp.arange(local_epoch * n, (local_epoch + 1) * n)
        return jax.vmap(lambda k: jax.vmap(
            lambda s: jax.random.fold_in(jax.random.fold_in(base, k), s))(steps))(
            jnp.asarray(clients))

    def step_inputs(self, round):
        clients = range(self.config.clients)
        for e in range(self.config.local.epochs):
            per_client = [self.client_batches(k, round, e) for k in clients]
            batches = jax.tree.map(lambda *xs: np.stack(xs), *per_client)
            yield e, batches, self.keys(list(clients), round, e)

    def step(self, state: FedState, local_epoch, batches, keys):
        server, clients = state
        if local_epoch == 0:
            clients = self.fed.start(server)
        clients, metrics = self.fed.local_epoch(clients, batches, keys)
        if local_epoch == self.config.local.epochs - 1:
            server = self.fed.aggregate(clients, self.sizes)
        return FedState(server, clients), metrics

    def client_round(self, server, client: int, round: int) -> tuple[Any, float, dict]:
        """One client's round alone, as a Flower client runs it: its local epochs from
        `server` with the batches and keys the simulation gives it -> (what it shares, its
        sample count, its mean step metrics)."""
        if self._alone is None:
            one = client_mesh(1, 1, self.config.local.batch_size)
            self._alone = Federation(self.learner, 1, one)
        fed, metrics = self._alone, []
        states = fed.start(server)
        for e in range(self.config.local.epochs):
            batches = jax.tree.map(lambda x: x[None], self.client_batches(client, round, e))
            states, m = fed.local_epoch(states, batches, self.keys([client], round, e))
            metrics.append(m)
        means = {k: float(np.mean(v)) for k, v in loop.stack_metrics(metrics).items()}
        return fed.aggregate(states, np.ones(1, np.float32)), float(self.sizes[client]), means

    def row(self, state, round, means):
        local = self.config.local
        per_client = [loop.evaluate(self.fed.eval, self.mesh, state.server, v, local.batch_size)
                      for _, v in self.halves]
        sizes = np.array([len(v) for _, v in self.halves], np.float64)
        loss, acc = (np.asarray(per_client) * sizes[:, None]).sum(0) / sizes.sum()
        return {
            **means,
            "valid_loss": float(loss),
            "valid_acc": float(acc),
            "client_valid_acc": [float(a) for _, a in per_client],
            **self._global_evals(state.server),
            **self.learner.row(state.server),
        }

    def _global_evals(self, server) -> dict:
        """The global model's loss and accuracy on the learner's held-out sets (the test set
        of FedAvg training)."""
        row = {}
        for name, ds in self.eval_sets.items():
            loss, acc = loop.evaluate(self.fed.eval, self.mesh, server, ds,
                                      self.config.local.batch_size)
            row.update({f"{name}_loss": float(loss), f"{name}_acc": float(acc)})
        return row

    def write(self, state, rows):
        save = self.config.save
        self.learner.write(save, state.server, rows)
        tests = tuple(f"{name}_acc" for name in self.eval_sets)
        plot_curves(rows, os.path.join(save, "curves.png"), "round",
                    [("train_loss", "valid_loss"), ("train_acc", "valid_acc", *tests)],
                    title=f"{self.config.clients} clients, {self.config.partition}")
        plot_client_accuracy(rows, os.path.join(save, "clients.png"))

    def checkpoint_due(self, round):
        return True

    def summary(self, row):
        tests = tuple(f"{name}_{k}" for name in self.eval_sets for k in ("loss", "acc"))
        return loop.summary_line(row, "round", ("train_loss", "train_acc", "valid_loss",
                                                "valid_acc", *tests))

    def finish(self, state, rows):
        if rows and is_main_process():
            print(f"result: {self.summary(rows[-1])}")
            print(self.learner.result(rows[-1]))
            print(f"files in {self.config.save}: metrics.jsonl, curves.png, clients.png, "
                  "partition.png, partition.txt, config.json, checkpoints/ (the newest two)"
                  f"{self.learner.files}", flush=True)
        return {"rows": rows, "state": state}


def _stream(ds, batch_size: int, seed: int, stream: int, streams: int, first: int,
            count: int):
    """Batches `first` .. `first + count` of an endless run of shuffled epochs of `ds`
    (`jnas.data.train_batches`): stream `stream` of `streams` (a client's half) of one seed."""
    per_epoch = jdata.num_train_batches(ds, batch_size)
    out, position = [], first
    while len(out) < count:
        epoch, skip = divmod(position, per_epoch)
        for i, batch in enumerate(jdata.train_batches(ds, batch_size, seed=seed,
                                                      epoch=epoch * streams + stream)):
            if i >= skip and len(out) < count:
                out.append(batch)
        position = (epoch + 1) * per_epoch
    return out


def run_fednas(config: FedConfig, *, progress: bool = True) -> dict:
    """Run (or resume) a federated search or training; returns {"rows", "state"}."""
    local = config.local
    desc = f"{LEARNERS[type(local)].title(local)}, {config.clients} clients, {local.dataset}"
    return loop.run(FedJob(config), progress=progress, desc=desc)
