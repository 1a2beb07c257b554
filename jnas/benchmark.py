"""Benchmark look-up: the trained accuracy of an NAS-Bench-201 architecture.

`Benchmark.load(path)` reads either

- a CSV table with an `arch` column of benchmark strings (`jnas.spaces.nb201.to_string`) and
  numeric metric columns (percent), e.g. `arch,cifar10_test,cifar100_test,imagenet16_test`;
- or a NATS-Bench topology ("tss") / NAS-Bench-201 benchmark file or folder, read through
  the optional `nats_bench` package (`pip install "jnas[nats]"`). Its metrics are the test
  accuracies after the full 200-epoch training averaged over seeds (`hp="200"`,
  `is_random=False`): `cifar10_test` on CIFAR-10's test set, `cifar100_test` and
  `imagenet16_test` on the benchmark's "x-test" half of CIFAR-100's and ImageNet16-120's.

`lookup(arch)` returns `{"benchmark_<column>": value}` for every metric column.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path

from jnas.errors import JnasError
from jnas.spaces import nb201

# NATS-Bench dataset name -> the metric column it fills.
NATS_DATASETS = {
    "cifar10": "cifar10_test",
    "cifar100": "cifar100_test",
    "ImageNet16-120": "imagenet16_test",
}
ARCH_COLUMN = "arch"
PREFIX = "benchmark_"


class Benchmark:
    """Metrics per architecture string, from a table in memory or a NATS-Bench API.

    Build one with `Benchmark.load(path)`. `columns` names the metrics; `lookup` validates
    the architecture string and returns every metric of it, keyed `benchmark_<column>`.
    """

    def __init__(
        self,
        source: str,
        columns: tuple[str, ...],
        table: dict[str, dict[str, float]] | None = None,
        query: Callable[[str], dict[str, float] | None] | None = None,
        archs: Callable[[], list[str]] | None = None,
    ):
        if (table is None) == (query is None):
            raise JnasError("a Benchmark needs exactly one of `table` and `query`")
        self.source = source
        self.columns = tuple(columns)
        self._table = table
        self._query = query
        self._archs = archs  # a queried benchmark's architecture strings, for `best`

    @classmethod
    def load(cls, path: str | os.PathLike) -> Benchmark:
        """A CSV table (`*.csv`), else a NATS-Bench/NAS-Bench-201 file or folder."""
        path = Path(path)
        if not path.exists():
            raise JnasError(
                f"benchmark file {str(path)!r} does not exist; give a CSV table with an "
                f"'{ARCH_COLUMN}' column or a NATS-Bench topology (tss) file or folder"
            )
        if path.is_file() and path.suffix.lower() == ".csv":
            return cls._from_csv(path)
        return cls._from_nats(path)

    @classmethod
    def _from_csv(cls, path: Path) -> Benchmark:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise JnasError(f"benchmark table {str(path)!r} is empty: it needs a header")
            header = [name.strip() for name in header]
            if ARCH_COLUMN not in header:
                raise JnasError(
                    f"benchmark table {str(path)!r} has no '{ARCH_COLUMN}' column (its columns: "
                    f"{', '.join(header)}); it needs '{ARCH_COLUMN}' with architecture strings "
                    f"such as {nb201.BEST_CIFAR10!r} and numeric metric columns"
                )
            if len(set(header)) != len(header) or "" in header:
                raise JnasError(
                    f"benchmark table {str(path)!r} needs distinct, non-empty column names, "
                    f"got {header}"
                )
            arch_at = header.index(ARCH_COLUMN)
            columns = tuple(name for name in header if name != ARCH_COLUMN)
            if not columns:
                raise JnasError(
                    f"benchmark table {str(path)!r} has no metric column besides "
                    f"'{ARCH_COLUMN}'"
                )
            table: dict[str, dict[str, float]] = {}
            lines: dict[str, int] = {}
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                where = f"row at line {line} of {str(path)!r}"
                if len(row) != len(header):
                    raise JnasError(
                        f"{where} has {len(row)} fields, the header has {len(header)}"
                    )
                try:
                    arch = nb201.to_string(nb201.from_string(row[arch_at]))
                except JnasError as e:
                    raise JnasError(f"{where}: {e}") from None
                if arch in table:
                    raise JnasError(
                        f"{where} repeats the architecture {arch!r} of line {lines[arch]}; "
                        "each architecture must appear once"
                    )
                values = {}
                for name, cell in zip(header, row, strict=True):
                    if name == ARCH_COLUMN:
                        continue
                    try:
                        values[name] = float(cell)
                    except ValueError:
                        raise JnasError(
                            f"{where}: column {name!r} has the non-numeric value {cell!r}; "
                            "metrics must be numbers (percent)"
                        ) from None
                    if not math.isfinite(values[name]):
                        raise JnasError(
                            f"{where}: column {name!r} has the non-finite value {cell!r}"
                        )
                table[arch], lines[arch] = values, line
        if not table:
            raise JnasError(f"benchmark table {str(path)!r} has no architectures")
        return cls(str(path), columns, table=table)

    @classmethod
    def _from_nats(cls, path: Path) -> Benchmark:
        try:
            from nats_bench import create
        except ImportError:
            raise JnasError(
                f"reading the benchmark {str(path)!r} needs the optional package nats_bench: "
                "pip install \"jnas[nats]\" (or give a CSV table with an 'arch' column)"
            ) from None
        try:
            api = create(str(path), "tss", fast_mode=True, verbose=False)
        except Exception as e:  # the package raises assorted errors for unreadable files
            raise JnasError(
                f"nats_bench could not read {str(path)!r} as the NATS-Bench topology (tss) "
                f"benchmark: {type(e).__name__}: {e}"
            ) from e

        def query(arch: str) -> dict[str, float] | None:
            index = api.query_index_by_arch(arch)
            if index < 0:
                return None
            return {
                column: float(
                    api.get_more_info(index, dataset, hp="200", is_random=False)["test-accuracy"]
                )
                for dataset, column in NATS_DATASETS.items()
            }

        return cls(str(path), tuple(NATS_DATASETS.values()), query=query,
                   archs=lambda: [api.arch(i) for i in range(len(api))])

    def __len__(self) -> int:
        if self._table is None:
            raise TypeError("a NATS-Bench benchmark is queried lazily and has no length here")
        return len(self._table)

    def __contains__(self, arch) -> bool:
        try:
            return self._get(_canonical(arch)) is not None
        except JnasError:
            return False

    def _get(self, arch: str) -> dict[str, float] | None:
        return self._table.get(arch) if self._table is not None else self._query(arch)

    def best(self, column: str) -> tuple[str, float]:
        """(architecture, value) of the highest `column` value over the whole benchmark, the
        first in the benchmark's order on a tie. A NATS-Bench source is queried for each of
        its 15,625 architectures."""
        if column not in self.columns:
            raise JnasError(f"`column` {column!r} is not a metric of the benchmark "
                            f"{self.source!r}; its metrics: {', '.join(self.columns)}")
        archs = list(self._table) if self._table is not None else self._archs()
        values = [self._get(arch)[column] for arch in archs]
        at = max(range(len(values)), key=lambda i: (values[i], -i))
        return archs[at], values[at]

    def lookup(self, arch) -> dict[str, float]:
        """`{"benchmark_<column>": value}` for the architecture string (or 6-tuple of op
        names) `arch`; raises if it is malformed or not in the benchmark."""
        arch = _canonical(arch)
        values = self._get(arch)
        if values is None:
            size = f" of {len(self._table)} architectures" if self._table is not None else ""
            raise JnasError(f"architecture {arch!r} is not in the benchmark table {self.source!r}"
                            f"{size}")
        return {PREFIX + name: values[name] for name in self.columns}


def _canonical(arch) -> str:
    """The benchmark string of `arch` (a string or a 6-tuple of op names), validated."""
    ops = nb201.from_string(arch) if isinstance(arch, str) else nb201.check_arch(arch)
    return nb201.to_string(ops)
