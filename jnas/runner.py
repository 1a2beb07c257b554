"""The search loop shared by the experiment scripts: data -> step -> metrics -> files.

`run_search(config)` writes into `config.save`:

- `genotype.json`: the genotype derived from the current alpha (official JSON layout)
- `alphas.npz`: raw alpha, arrays `normal` and `reduce`
- `metrics.jsonl`: one JSON object per epoch
- `genotype.png`, `alphas.png`: the two cells and softmax(alpha) per edge
- `checkpoints/<epoch>/`: the full search state after each epoch
- `config.json`: the settings; rerunning with the same `--save` resumes from the newest
  checkpoint and gives the same result as an uninterrupted run.

The step runs data-parallel over `config.devices` devices of every process (jnas.sharding);
with several processes each loads only its rows of every batch and process 0 alone writes
files and prints. `--save` must then be a folder that every process sees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from jnas import data as jdata
from jnas.checkpoint import Checkpointer
from jnas.errors import JnasError
from jnas.genotype import derive_genotype, genotype_to_dict, save_genotype
from jnas.plotting import plot_alpha, plot_genotype
from jnas.search import Search, SearchConfig
from jnas.sharding import (
    assert_traced_once,
    data_mesh,
    is_main_process,
    local_rows,
    put_batch,
)

# Settings that say where things are and what runs them, not what is computed: they may
# differ between a run and its resumption.
RUN_FIELDS = ("data_dir", "save", "devices")


def _config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check_resumable(config, path: str, may_differ: tuple[str, ...] = RUN_FIELDS) -> None:
    """Refuse to resume a run written with other settings (those not in `may_differ`): its
    checkpoint would not fit them, or it would compute something else."""
    new = _config_dict(config)
    if not os.path.exists(path):
        if is_main_process():
            write_atomic(path, json.dumps(new, indent=2))
        return
    with open(path) as f:
        old = json.load(f)
    diff = {k: (old.get(k), v) for k, v in new.items() if k not in may_differ and old.get(k) != v}
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise JnasError(
            f"{os.path.dirname(path)} holds a run with other settings ({changes}). "
            "Rerun with the same flags to resume it, or pass a new --save."
        )


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_metrics(path: str, up_to: int, key: str = "epoch") -> list[dict]:
    """Metrics of the epochs (iterations) a checkpoint covers (a crash may have left later
    lines)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r[key] <= up_to]


def evaluate(search: Search, state, dataset, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy over a whole split, BatchNorm in inference mode."""
    totals = np.zeros(3)
    mine = local_rows(search.mesh, batch_size)
    for batch in jdata.eval_batches(dataset, batch_size, mine):
        sums = search.eval_step(state, put_batch(batch, search.mesh))
        totals += np.asarray(jax.device_get(sums), dtype=np.float64)
    return totals[0] / totals[2], totals[1] / totals[2]


def _write_outputs(config: SearchConfig, state, metrics_rows: list[dict], genotype) -> None:
    save = config.save
    alpha = {k: np.asarray(v) for k, v in jax.device_get(state.alpha).items()}
    save_genotype(genotype, os.path.join(save, "genotype.json"))
    tmp = os.path.join(save, "alphas.tmp.npz")
    np.savez(tmp, **alpha)
    os.replace(tmp, os.path.join(save, "alphas.npz"))
    write_atomic(
        os.path.join(save, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in metrics_rows)
    )
    epoch = metrics_rows[-1]["epoch"]
    plot_genotype(genotype, os.path.join(save, "genotype.png"), title=f"epoch {epoch}")
    plot_alpha(
        alpha,
        os.path.join(save, "alphas.png"),
        primitives=config.primitives,
        title=f"softmax(alpha), epoch {epoch}",
    )


def run_search(config: SearchConfig, *, progress: bool = True) -> list[dict]:
    """Run (or resume) a search; returns the metrics of every epoch."""
    dataset = jdata.load_dataset(config.dataset, config.data_dir, split="train")
    w_split, alpha_split = jdata.search_split(dataset, config.train_portion)
    steps_per_epoch = min(
        jdata.num_train_batches(w_split, config.batch_size),
        jdata.num_train_batches(alpha_split, config.batch_size),
    )
    mesh = data_mesh(config.devices)
    mine = local_rows(mesh, config.batch_size)  # checks that the batch divides over devices
    main = is_main_process()
    if main:
        os.makedirs(config.save, exist_ok=True)
    check_resumable(config, os.path.join(config.save, "config.json"))

    search = Search(config, dataset.num_classes, steps_per_epoch, mesh)
    key = jax.random.key(config.seed)
    init_key, step_key = jax.random.split(key)
    state = search.init(init_key, jdata.preprocess(dataset, dataset.x[:2]))

    checkpointer = Checkpointer(os.path.join(config.save, "checkpoints"))
    start = checkpointer.latest_epoch() or 0
    rows = []
    if start:
        state = checkpointer.restore(start, like=state)
        rows = read_metrics(os.path.join(config.save, "metrics.jsonl"), start)
        if main:
            print(f"resuming {config.save} after epoch {start}")

    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.time()
        step_metrics = []
        # Independent orders for the two halves: epochs 2e and 2e+1 of the data stream. The
        # halves may differ by a batch; the epoch ends with the shorter one.
        batches = zip(
            jdata.train_batches(
                w_split, config.batch_size, seed=config.seed, epoch=2 * epoch, rows=mine
            ),
            jdata.train_batches(
                alpha_split, config.batch_size, seed=config.seed, epoch=2 * epoch + 1, rows=mine
            ),
            strict=False,
        )
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not (progress and main),
            leave=False,
        )
        for i, (train_batch, val_batch) in enumerate(bar):
            state, m = search.step(
                state,
                put_batch(train_batch, mesh),
                put_batch(val_batch, mesh),
                jax.random.fold_in(step_key, state.step),
            )
            step_metrics.append(m)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{float(m['train_loss']):.3f}")
        bar.close()
        stacked = jax.device_get(stack_metrics(step_metrics))
        means = {k: float(np.mean(v)) for k, v in stacked.items()}
        if not all(np.isfinite(v) for v in means.values()):
            raise JnasError(
                f"the loss became non-finite in epoch {epoch} ({means}). The files and the "
                f"checkpoint of epoch {epoch - 1} in {config.save} are kept. Lower "
                "--learning_rate or --arch_learning_rate, or check the data for NaNs."
            )
        valid_loss, valid_acc = evaluate(search, state, alpha_split, config.batch_size)
        assert_traced_once(search.step, search.eval_step)
        genotype = derive_genotype(
            jax.device_get(state.alpha),
            config.primitives,
            config.nodes,
            config.nodes,
            fixed_reduction=config.fix_reduction,
        )
        rows.append(
            {
                "epoch": epoch,
                "train_loss": means["train_loss"],
                "train_acc": means["train_acc"],
                "arch_loss": means["arch_loss"],
                "valid_loss": valid_loss,
                "valid_acc": valid_acc,
                "lr": means["lr"],
                **({"tau": means["tau"]} if "tau" in means else {}),
                "genotype": genotype_to_dict(genotype),
                "seconds": time.time() - t0,
            }
        )
        # Files first, then the checkpoint: a crash in between resumes from the previous
        # checkpoint and drops this epoch's metrics line. Every process joins the checkpoint
        # (Orbax lets one replica write the replicated state).
        if main:
            _write_outputs(config, state, rows, genotype)
        checkpointer.save(epoch, state)
        if main:
            print(
                f"epoch {epoch}: train_loss {means['train_loss']:.4f} train_acc "
                f"{means['train_acc']:.4f} valid_loss {valid_loss:.4f} valid_acc "
                f"{valid_acc:.4f} ({rows[-1]['seconds']:.1f} s)",
                flush=True,
            )
    return rows


def stack_metrics(metrics: list[dict]) -> dict:
    """Per-step metric dicts -> one dict of stacked arrays (one host transfer)."""
    return jax.tree.map(lambda *xs: np.stack(xs), *metrics)
