"""Command-line plumbing shared by the scripts in experiments/.

Every script has the same flags, outputs, progress bars and resume behaviour; a script adds
only its algorithm's flags and fixes `algorithm`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import threading

import jax

from jnas.algorithms import ALGORITHMS, algorithm
from jnas.enas import EnasConfig, run_enas
from jnas.errors import JnasError
from jnas.evaluation import TrainConfig, run_train
from jnas.fednas import STAGES, UNFEDERATED, FedConfig, local_defaults, run_fednas
from jnas.hpo import HPOConfig, run_hpo
from jnas.io import WRITING
from jnas.meta import MetaConfig
from jnas.meta_runner import run_meta
from jnas.runner import run_search
from jnas.search import SearchConfig
from jnas.sharding import initialize_distributed
from jnas.spaces import SPACES
from jnas.table_search import TableSearchConfig, run_table_search

DEFAULT_COMPILE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jnas", "xla")

# Flags that are not config fields.
_SCRIPT_FLAGS = (
    "no_progress",
    "compile_cache",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
)
# A field's flag is --<field>, except these; and these fields take more names.
_FLAG_NAMES = {"primitives": "ops"}
_ALIASES = {"second_order": ("--unrolled",), "lam": ("--lambda",)}


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, spaces around them ignored."""
    names = tuple(name.strip() for name in text.split(","))
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give comma-separated names, e.g. "
                                         "none,skip_connect")
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"{text!r} has an empty name; give comma-separated names, e.g. none,skip_connect"
        )
    return names


# The value types of the fields' annotations (strings: the configs' modules use
# `from __future__ import annotations`).
_TYPES = {"str": str, "int": int, "float": float, "tuple[str, ...]": _names}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and every flag's default in its help (a None
    default's meaning is in the help text itself)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def flag(field: str) -> str:
    return "--" + _FLAG_NAMES.get(field, field)


def config_parser(doc: str, defaults, skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A flag for every field of the config `defaults` but `skip`, with the field's help and
    choices (`jnas.config.option`) and `defaults`' values as the defaults; then the flags of
    every script."""
    p = argparse.ArgumentParser(description=doc, formatter_class=_Formatter, allow_abbrev=False)
    for f in dataclasses.fields(defaults):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name)
        kwargs = {"default": default, "dest": f.name, "help": f.metadata["help"],
                  "choices": f.metadata.get("choices")}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _TYPES[f.type.removesuffix(" | None")]
            if kwargs["type"] is _names:
                kwargs["metavar"] = "NAMES"
            if isinstance(default, tuple):  # shown and parsed as the flag's text
                kwargs["default"] = ",".join(default)
        p.add_argument(flag(f.name), *_ALIASES.get(f.name, ()), **kwargs)
    add_script_flags(p)
    return p


def search_parser(doc: str, defaults: SearchConfig, skip=()) -> argparse.ArgumentParser:
    """The flags of a search script: the SearchConfig fields its algorithm reads (named as
    the official code names them) but `skip`, `defaults` (`SearchConfig.published`) as the
    defaults."""
    algo = algorithm(defaults.algorithm)
    others = {o for a in ALGORITHMS.values() for o in a.options} - set(algo.options)
    return config_parser(doc, defaults, skip=("algorithm", *sorted(others), *skip))


def add_script_flags(p: argparse.ArgumentParser) -> None:
    """Progress bar, compilation cache, hosts: every script's flags that are not settings."""
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compile_cache",
        default=os.environ.get("JNAS_COMPILE_CACHE", DEFAULT_COMPILE_CACHE),
        help="folder of JAX's persistent compilation cache, so that a resumed or repeated run "
        "does not compile its steps again; 'none' turns it off, as do multi-process CPU runs "
        "(default: $JNAS_COMPILE_CACHE or %(default)s)",
    )
    add_host_flags(p)


def add_host_flags(p: argparse.ArgumentParser) -> None:
    """jax.distributed's settings, for runs over several processes (hosts)."""
    hosts = p.add_argument_group(
        "several hosts",
        "jax.distributed.initialize() runs with --distributed or when a coordinator is\n"
        "given (flag or JAX_COORDINATOR_ADDRESS); unset values come from JAX_NUM_PROCESSES,\n"
        "JAX_PROCESS_ID or the cluster (SLURM, Open MPI, Cloud TPU).",
    )
    hosts.add_argument("--distributed", action="store_true", help="join a multi-process run")
    hosts.add_argument("--coordinator_address", help="host:port of process 0")
    hosts.add_argument("--num_processes", type=int, help="processes in the run")
    hosts.add_argument("--process_id", type=int, help="this process's index, 0 for the "
                       "coordinator")


def search_config(algorithm_name: str, doc: str, argv=None, extra=None):
    """(SearchConfig, script flags) of a search script's command line: `--space` (and the
    algorithm) choose the defaults, the other flags override them. `extra(parser)` adds
    script-only flags."""
    space = _first_pass(argv, "--space", "darts")
    defaults = SearchConfig.published(algorithm_name, space, save=f"runs/{algorithm_name}")
    parser = search_parser(doc, defaults)
    if extra is not None:
        extra(parser)
    return _config(SearchConfig, parser, argv, algorithm=algorithm_name)


def search_main(algorithm_name: str, doc: str, argv=None, extra=None, run=run_search) -> int:
    """A search script's main; 2 on a JnasError. `run(config, progress=..., **flags)` runs
    the config, with the flags that `extra` adds and that are not config fields."""
    return _main(lambda argv: search_config(algorithm_name, doc, argv, extra), run,
                 SearchConfig, argv)


def meta_config(doc: str, argv=None):
    """(MetaConfig, script flags) of experiments/tnas.py's command line."""
    return _config(MetaConfig, config_parser(doc, MetaConfig()), argv)


def meta_main(doc: str, argv=None) -> int:
    """experiments/tnas.py's main; 2 on a JnasError."""
    return _main(lambda argv: meta_config(doc, argv), run_meta, MetaConfig, argv)


def train_config(doc: str, argv=None):
    """(TrainConfig, script flags) of experiments/train.py's command line: `--protocol`
    chooses the defaults, the other flags override them."""
    protocol = _first_pass(argv, "--protocol", "darts", choices=tuple(SPACES))
    defaults = TrainConfig.published(protocol, save="runs/train")
    return _config(TrainConfig, config_parser(doc, defaults), argv)


def train_main(doc: str, argv=None) -> int:
    """experiments/train.py's main; 2 on a JnasError."""
    return _main(lambda argv: train_config(doc, argv), run_train, TrainConfig, argv)


def hpo_config(doc: str, argv=None):
    """(HPOConfig, script flags) of experiments/hpo.py's command line."""
    return _config(HPOConfig, config_parser(doc, HPOConfig()), argv)


def hpo_main(doc: str, argv=None) -> int:
    """experiments/hpo.py's main; 2 on a JnasError."""
    return _main(lambda argv: hpo_config(doc, argv), run_hpo, HPOConfig, argv)


def fednas_config(doc: str, argv=None):
    """(FedConfig, script flags) of experiments/fednas.py's command line: `--stage` and
    `--space` choose the local defaults (`jnas.fednas.local_defaults`), `--local_epochs` is
    the local config's `epochs`, the federated settings are FedConfig's fields."""
    stage = _first_pass(argv, "--stage", "search", choices=tuple(STAGES))
    space = _first_pass(argv, "--space", "darts", choices=tuple(SPACES))
    defaults = local_defaults(stage, space)
    fixed = ("epochs", "protocol", *UNFEDERATED)  # --local_epochs; the space; unread
    if stage == "search":
        parser = search_parser(doc, defaults, skip=fixed)
    else:
        parser = config_parser(doc, defaults, skip=fixed)
        parser.add_argument("--space", default=space, choices=tuple(SPACES),
                            help="the space of the trained architecture, and its protocol")
    parser.add_argument("--stage", default=stage, choices=tuple(STAGES),
                        help="search: FedNAS's search; train: FedAvg training of --arch")
    parser.add_argument("--local_epochs", type=int, default=defaults.epochs,
                        help="local epochs per round")
    fed = FedConfig(local=defaults)
    for f in dataclasses.fields(FedConfig)[1:]:  # after `local`
        parser.add_argument(flag(f.name), dest=f.name, default=getattr(fed, f.name),
                            type=_TYPES[f.type], choices=f.metadata.get("choices"),
                            help=f.metadata["help"])
    args = vars(parser.parse_args(argv))
    del args["stage"]
    local_fields = {f.name for f in dataclasses.fields(defaults)}
    fed_fields = {f.name for f in dataclasses.fields(FedConfig)}
    local = {k: args.pop(k) for k in list(args) if k in local_fields}
    fed = {k: args.pop(k) for k in list(args) if k in fed_fields}
    local["epochs"] = args.pop("local_epochs")
    local.update({"algorithm": defaults.algorithm} if stage == "search"
                 else {"protocol": args.pop("space")})
    return FedConfig(local=type(defaults)(**local), **fed), args


def fednas_main(doc: str, argv=None) -> int:
    """experiments/fednas.py's main; 2 on a JnasError."""
    return _main(lambda argv: fednas_config(doc, argv), run_fednas,
                 (FedConfig, SearchConfig, TrainConfig), argv)


def table_search_config(doc: str, argv=None):
    """(TableSearchConfig, script flags) of experiments/table_search.py's command line."""
    return _config(TableSearchConfig, config_parser(doc, TableSearchConfig()), argv)


def table_search_main(doc: str, argv=None) -> int:
    """experiments/table_search.py's main; 2 on a JnasError."""
    return _main(lambda argv: table_search_config(doc, argv), run_table_search,
                 TableSearchConfig, argv)


def _first_pass(argv, flag: str, default: str, choices=None) -> str:
    """The value of `flag`, read before the other flags, whose defaults it chooses."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(flag, default=default, choices=choices)
    return getattr(pre.parse_known_args(argv)[0], flag.lstrip("-"))


def _main(config_of, run_config, config_class, argv) -> int:
    """A script's main: `config_of(argv)` -> (config, script flags), then `run_config`."""

    def run(argv):
        config, flags = config_of(argv)
        start(flags)
        own = {k: v for k, v in flags.items() if k not in _SCRIPT_FLAGS}
        run_config(config, progress=not flags["no_progress"], **own)

    return _run(run, argv, config_class)


def _config(config_class, parser, argv, **fixed):
    """(config, flags): the parsed flags that are not the config's fields are the script's."""
    args = vars(parser.parse_args(argv))
    fields = {f.name for f in dataclasses.fields(config_class)}
    flags = {k: args.pop(k) for k in list(args) if k not in fields}
    return config_class(**args, **fixed), flags


def avoid_gpu_compiler_abort() -> None:
    """Turn off XLA's Triton GEMM fusion on GPU unless XLA_FLAGS already sets it: with jax
    0.11.2 on an H100, compiling a search step aborted the process in that pass (a failed
    check in triton_tiling_propagation.cc); with the flag it compiled and ran. Effective only
    before JAX first touches a device, so the scripts call it first."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_enable_triton_gemm" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_enable_triton_gemm=false".strip()


def start(flags: dict) -> None:
    """Set up what the script flags ask for: the compilation cache, several hosts."""
    if flags["compile_cache"] != "none":
        jax.config.update("jax_compilation_cache_dir", flags["compile_cache"])
    coordinator = flags["coordinator_address"] or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if flags["distributed"] or coordinator:
        initialize_distributed(flags["coordinator_address"], flags["num_processes"],
                               flags["process_id"])


def as_flags(message: str, config_classes) -> str:
    """A library message with its `field` names (of a config class or a tuple of them)
    written as the command line's --flags."""
    classes = config_classes if isinstance(config_classes, tuple) else (config_classes,)
    fields = {f.name for c in classes for f in dataclasses.fields(c)}
    return re.sub(r"`(\w+)`", lambda m: flag(m[1]) if m[1] in fields else m[0], message)


def _run(run, argv, config_class) -> int:
    avoid_gpu_compiler_abort()
    if argv is None:  # a script run from the command line, not a caller's main([...])
        stop_on_interrupt()
    try:
        run(argv)
    except JnasError as e:
        print(f"error: {as_flags(str(e), config_class)}", file=sys.stderr)
        return 2
    return 0


def stop_on_interrupt() -> None:
    """Make Ctrl-C (SIGINT) end the script at once with exit status 130 and one line, also
    while XLA compiles.

    Python runs signal handlers only between bytecodes of the main thread, so a
    KeyboardInterrupt waits for a compilation to return and may then be raised inside a
    garbage-collector callback, which swallows it (the run went on). Instead the signal
    wakes a watcher thread through `signal.set_wakeup_fd`, written by the C-level handler
    whatever the main thread is doing; the watcher waits for any file or checkpoint write in
    progress (`jnas.io.WRITING`), so the run folder keeps its last complete unit, then exits.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.signal(signal.SIGINT, lambda *_: None)  # no KeyboardInterrupt in the main thread
    signal.set_wakeup_fd(write_end)

    def watch():
        while os.read(read_end, 1) != bytes([signal.SIGINT]):
            pass
        with WRITING:
            sys.stdout.flush()
            print("\ninterrupted (Ctrl-C): the run folder keeps the newest checkpoint, if "
                  "any; rerun the same command to resume", file=sys.stderr, flush=True)
            os._exit(130)

    threading.Thread(target=watch, name="jnas-interrupt", daemon=True).start()


def enas_config(doc: str, argv=None):
    """(EnasConfig, script flags) of experiments/enas.py's command line: `--space` chooses
    the defaults (`EnasConfig.published`), the other flags override them."""
    space = _first_pass(argv, "--space", "darts", choices=tuple(SPACES))
    return _config(EnasConfig, config_parser(doc, EnasConfig.published(space)), argv)


def enas_main(doc: str, argv=None) -> int:
    """experiments/enas.py's main; 2 on a JnasError."""
    return _main(lambda argv: enas_config(doc, argv), run_enas, EnasConfig, argv)
