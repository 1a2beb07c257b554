"""Client partitions for federated learning: which training examples each client holds.

`partition(labels, clients, kind, seed=..., ...)` returns one index array per client. Every
example goes to exactly one client, and the same (labels, settings, seed) give the same
partition. The kinds (`PARTITIONS`):

- `iid`: a random permutation cut into `clients` parts of equal size (+-1).
- `dirichlet`: label skew. For every class, its examples are shared out by proportions drawn
  from Dirichlet(`dirichlet_alpha`); a client already holding N/clients examples gets no more
  of later classes. Redrawn until every client holds at least `min_samples` (FedML's
  `partition_data` "hetero", used by FedNAS: alpha 0.5, minimum 10). The smaller alpha, the
  fewer classes a client holds.
- `shards`: McMahan et al.'s pathological non-IID split (2017): the examples sorted by label,
  cut into 2 x `clients` shards, two random shards per client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from jnas.errors import JnasError

_MAX_DRAWS = 1000  # Dirichlet redraws before giving up on `min_samples`


def _iid(labels, clients, rng, **_):
    return np.array_split(rng.permutation(len(labels)), clients)


def _dirichlet(labels, clients, rng, *, dirichlet_alpha, min_samples, **_):
    n = len(labels)
    for _ in range(_MAX_DRAWS):
        parts = [[] for _ in range(clients)]
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(clients, dirichlet_alpha))
            open_ = np.array([len(part) < n / clients for part in parts], np.float64)
            p = p * open_  # FedML's balance
            if not p.sum() > 0:  # the draw's mass all on full clients (a small alpha)
                p = open_
            cuts = (np.cumsum(p / p.sum()) * len(members)).astype(int)[:-1]
            for part, share in zip(parts, np.split(members, cuts), strict=True):
                part.extend(share)
        if min(len(part) for part in parts) >= min_samples:
            return [rng.permutation(np.asarray(part, np.int64)) for part in parts]
    raise JnasError(
        f"no Dirichlet({dirichlet_alpha}) partition of {n} examples over {clients} clients gave "
        f"every client at least `min_client_samples` {min_samples} examples in {_MAX_DRAWS} "
        "draws; lower `min_client_samples` or `clients`, or raise `dirichlet_alpha`"
    )


def _shards(labels, clients, rng, **_):
    by_label = np.argsort(labels, kind="stable")
    shards = np.array_split(by_label, 2 * clients)
    order = rng.permutation(2 * clients)
    return [np.concatenate([shards[order[2 * k]], shards[order[2 * k + 1]]])
            for k in range(clients)]


class Kind(NamedTuple):
    split: Callable  # (labels, clients, rng, *, dirichlet_alpha, min_samples) -> parts
    least: Callable[[int], int]  # min_samples -> the fewest examples a client can hold


PARTITIONS: dict[str, Kind] = {
    "iid": Kind(_iid, lambda min_samples: 1),
    "dirichlet": Kind(_dirichlet, lambda min_samples: min_samples),
    "shards": Kind(_shards, lambda min_samples: 2),  # two shards of one example
}


def check_partition_settings(kind: str, clients: int, dirichlet_alpha: float,
                             min_samples: int) -> None:
    """The settings' own checks, before any data is loaded."""
    if kind not in PARTITIONS:
        raise JnasError(f"unknown `partition` {kind!r}: choose one of {', '.join(PARTITIONS)}")
    if clients < 1:
        raise JnasError(f"`clients` must be at least 1, got {clients}")
    if not dirichlet_alpha > 0:
        raise JnasError(f"`dirichlet_alpha` must be > 0 (0.5 is FedML's label skew; larger is "
                        f"closer to iid), got {dirichlet_alpha}")
    if min_samples < 1:
        raise JnasError(f"`min_client_samples` must be at least 1, got {min_samples}")


def partition(labels, clients: int, kind: str = "dirichlet", *, seed: int = 0,
              dirichlet_alpha: float = 0.5, min_samples: int = 10) -> list[np.ndarray]:
    """One array of example indices per client (see the module's docstring)."""
    check_partition_settings(kind, clients, dirichlet_alpha, min_samples)
    labels = np.asarray(labels)
    least = PARTITIONS[kind].least(min_samples)
    if len(labels) < clients * least:
        raise JnasError(
            f"{len(labels)} examples cannot give {clients} clients at least {least} each (the "
            f"{kind} partition's least); lower `clients` to at most {len(labels) // least}"
        )
    rng = np.random.default_rng([seed, 0xFED])
    return PARTITIONS[kind].split(labels, clients, rng, dirichlet_alpha=dirichlet_alpha,
                                  min_samples=min_samples)


def class_counts(labels, parts, num_classes: int) -> np.ndarray:
    """(clients, classes) counts of each client's examples per class."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def counts_table(counts: np.ndarray) -> str:
    """The class counts as a text table: a row per client, its total last."""
    classes = counts.shape[1]
    width = max(5, len(str(counts.max())) + 1)
    head = "client" + "".join(f"{c:>{width}}" for c in range(classes)) + f"{'total':>8}"
    rows = [f"{k:>6}" + "".join(f"{v:>{width}}" for v in row) + f"{row.sum():>8}"
            for k, row in enumerate(counts)]
    return "\n".join([head, *rows])
