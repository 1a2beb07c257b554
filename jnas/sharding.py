"""Data parallelism over a 1-D device mesh, on one host or many.

Every search step is `jax.jit` with `NamedSharding`s: the batch is split over the mesh's
`data` axis, while the weights, alpha, optimizer states and the key are replicated. The step
is written as the single-device computation on the global batch, so XLA's partitioner turns
every batch reduction into a cross-device one: the loss means, the gradients and the
BatchNorm statistics are those of the global batch (synchronised BatchNorm), and one Gumbel
sample per step, drawn from the replicated key, is shared by all devices. N devices compute
what one device computes on the same global batch, up to the order of float additions.

Several hosts: call `initialize_distributed` first, then each process loads only its rows of
every global batch (`local_rows`) and `put_batch` assembles the global array.
"""

from __future__ import annotations

import functools
import inspect
import math
import os

import chex
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jnas.errors import JnasError

DATA_AXIS = "data"
CLIENT_AXIS = "clients"
REPLICATED = PartitionSpec()


def data_mesh(devices_per_process: int | None = None) -> Mesh:
    """A mesh over the first `devices_per_process` local devices of every process (all if None).

    Devices are ordered by process, so each process owns one contiguous block of every batch.
    """
    local = jax.local_device_count()
    n = local if devices_per_process is None else devices_per_process
    if not 1 <= n <= local:
        raise JnasError(
            f"`devices` must lie in 1..{local} (the {jax.devices()[0].platform} devices this "
            f"process sees), got {n}"
        )
    by_process: dict[int, list] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    devices = [d for p in sorted(by_process) for d in by_process[p][:n]]
    return Mesh(np.array(devices), (DATA_AXIS,))


def client_mesh(devices: int | None, clients: int, batch_size: int) -> Mesh:
    """A (clients, data) mesh over the first `devices` local devices (all if None) of one
    process: as many client groups as divide both the device and the client count, each
    client's batch split over the rest. 4 devices: 16 clients 4 x 1, 2 clients 2 x 2."""
    local = data_mesh(devices).devices.flatten()
    groups = math.gcd(len(local), clients)
    per_client = len(local) // groups
    if batch_size % per_client:
        raise JnasError(
            f"`batch_size` {batch_size} must divide by the {per_client} devices that each "
            f"client's batch is split over ({len(local)} devices, {clients} clients); pass a "
            f"multiple of {per_client} or set `devices`"
        )
    return Mesh(local.reshape(groups, per_client), (CLIENT_AXIS, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


class ShardedStep:
    """`jax.jit(fn)` over `mesh`: the arguments at `batch_argnums` split over the data axis,
    the other arguments and the outputs replicated.

    It counts its traces (`traces`). A step is meant to compile once per run; a second trace
    means an argument changed its shape, dtype or structure between calls, which would
    compile the whole step again. The run loops check it (`assert_traced_once`).

    `specs` gives other arguments' `PartitionSpec`s by position and `out_specs` the outputs'
    (a spec or a tuple of specs, one per output), for meshes with more axes than `data`
    (FedNAS's clients x data).
    """

    def __init__(self, fn, mesh: Mesh, batch_argnums: tuple[int, ...] = (),
                 specs: dict[int, PartitionSpec] | None = None,
                 out_specs: PartitionSpec | tuple = REPLICATED):
        self.traces = 0
        self.name = getattr(fn, "__name__", "step").lstrip("_")

        @functools.wraps(fn)
        def counted(*args):
            self.traces += 1
            return fn(*args)

        specs = {**{i: PartitionSpec(DATA_AXIS) for i in batch_argnums}, **(specs or {})}
        nargs = len(inspect.signature(fn).parameters)
        shardings = tuple(NamedSharding(mesh, specs.get(i, PartitionSpec()))
                          for i in range(nargs))
        outs = jax.tree.map(lambda s: NamedSharding(mesh, s), out_specs,
                            is_leaf=lambda s: isinstance(s, PartitionSpec))
        self._jitted = jax.jit(counted, in_shardings=shardings, out_shardings=outs)

    def __call__(self, *args):
        return self._jitted(*args)

    def lower(self, *args):
        return self._jitted.lower(*args)


def map_rows(fn, shared, rows, mesh: Mesh, at_once: int):
    """`jax.vmap(fn, in_axes=(None, 0))(shared, rows)`, `rows` split over the mesh's data
    axis: each device applies `fn` to its own rows, `at_once` of them together (vmapped) and
    the groups one after another (`lax.map`). Fewer at once hold fewer activations in memory;
    which is faster depends on the backend (MAML's tasks: bench/README.md). `fn` must take
    what it shares with every row from `shared`, not from a closure."""

    def local(shared, rows):
        n = jax.tree.leaves(rows)[0].shape[0]
        if at_once >= n:
            return jax.vmap(fn, in_axes=(None, 0))(shared, rows)
        # batch_size=1 would vmap `fn` over groups of one: plain `lax.map` is its own program.
        batch_size = at_once if at_once > 1 else None
        return jax.lax.map(lambda row: fn(shared, row), rows, batch_size=batch_size)

    split = PartitionSpec(DATA_AXIS)
    # Without the replication check: with it, a gradient that `fn` takes in `shared` (MAML's
    # inner loop, in the meta-parameters) would be summed over the devices.
    return jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), split), out_specs=split, check_vma=False
    )(shared, rows)


def assert_traced_once(*steps: ShardedStep) -> None:
    """Fail loudly if a step was traced (and so compiled) more than once."""
    for step in steps:
        if step.traces > 1:
            raise RuntimeError(
                f"the {step.name} function was traced {step.traces} times in one run; it "
                "must compile once. An argument changed its shape, dtype or pytree structure "
                "between calls (a bug in jnas: please report it)."
            )


def check_batch_size(mesh: Mesh, batch_size: int, name: str = "batch_size") -> None:
    """`batch_size` must divide over the mesh's devices; `name` is the setting it came from."""
    if batch_size % mesh.size:
        raise JnasError(
            f"`{name}` {batch_size} (the global batch) must divide by the {mesh.size} "
            f"devices it is split over; pass a multiple of {mesh.size} or set `devices`"
        )


def local_rows(mesh: Mesh, batch_size: int, name: str = "batch_size") -> slice:
    """The rows of a global batch that this process's devices hold (and so must load)."""
    check_batch_size(mesh, batch_size, name)
    per_device = batch_size // mesh.size
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def put_batch(local_batch, mesh: Mesh):
    """This process's rows (`local_rows`) of a global batch -> global arrays split over `data`."""
    chex.assert_equal_shape_prefix(jax.tree.leaves(local_batch), 1)  # one row count
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def put_replicated(tree, mesh: Mesh):
    """Values that every process holds alike -> arrays replicated over the mesh."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def is_main_process() -> bool:
    """Only process 0 writes files and prints."""
    return jax.process_index() == 0


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """`jax.distributed.initialize`, with CPU collectives over gloo so CPU hosts work too.

    Arguments left None come from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID`, else from JAX's cluster detection (SLURM, Open MPI, Cloud TPU).
    Must run before anything touches a device. On CPU it turns JAX's persistent compilation
    cache off.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    if jax.default_backend() == "cpu":
        # JAX writes the cache from process 0 only, so process 0 can load a step that the
        # others compile afresh; with jax 0.10.2 gloo then aborted on a collective mismatch
        # ("16 vs 4") in every 2-process CPU run where process 0 loaded its step.
        jax.config.update("jax_enable_compilation_cache", False)
