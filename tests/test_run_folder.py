"""What a new user meets first: the command line's messages and help, the run folder (its
files' modes, reuse, reruns), the compile notice and Ctrl-C."""

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

import jnas
from jnas import cli
from jnas.io import write_text
from jnas.meta import MetaConfig
from jnas.search import SearchConfig
from tests.common import EPOCHS, ROOT, TINY, load_script, read_metrics

darts = load_script("darts")
SCRIPTS = ("darts", "gdas", "milenas", "snas", "tnas", "train", "rsps", "enas", "hpo",
           "table_search")


def error_of(capsys, *args):
    assert darts.main([str(a) for a in args]) == 2
    return capsys.readouterr().err


# -- settings are checked before anything loads or compiles ---------------------------------

def test_a_network_without_both_cell_types_is_refused():
    for layers in (1, 2):
        with pytest.raises(jnas.JnasError, match=f"`layers` {layers} has no normal cell.*"
                           "smallest `layers` with both cell types is 3"):
            SearchConfig(layers=layers)
    with pytest.raises(jnas.JnasError, match="no reduction cell.*at least 2"):
        MetaConfig(layers=1)
    SearchConfig(layers=3)
    MetaConfig(layers=2)


def _commands():
    """Every `python experiments/<script>.py ...` line of the README and the scripts' help."""
    texts = [(ROOT / "README.md").read_text()]
    texts += [load_script(s).__doc__ for s in SCRIPTS]
    for text in texts:
        text = text.replace("\\\n", " ")
        for line in text.splitlines():
            m = re.search(r"python experiments/(\w+)\.py(.*?)(#|$)", line)
            # Not the placeholders (`...`, `$i`); a table's `[--flag]` is an optional flag.
            if m and m[1] in SCRIPTS and not re.search(r"\.\.\.|\$", m[2]):
                yield m[1], shlex.split(re.sub(r"[\[\]]", "", m[2].split("`")[0]))


def test_every_documented_command_has_valid_settings(tmp_path):
    genotype = jnas.save_genotype(jnas.DARTS_V2, tmp_path / "genotype.json")
    commands = list(_commands())
    assert len(commands) > 15
    configs = {"tnas": cli.meta_config, "train": cli.train_config, "enas": cli.enas_config,
               "hpo": cli.hpo_config, "table_search": cli.table_search_config}
    for script, argv in commands:
        # A search's genotype.json: written here, the command assumes a search ran.
        argv = [str(genotype) if a.endswith(".json") else a for a in argv]
        if script in configs:
            configs[script]("", argv)
        else:
            extra = load_script(script).gdas_flag if script == "milenas" else None
            cli.search_config(script, "", argv, extra)


def test_bad_values_get_messages_that_name_the_flag(capsys):
    assert "--learning_rate must be a finite number, got nan" in error_of(
        capsys, *TINY, "--learning_rate", "nan")
    assert load_script("gdas").main([*TINY, "--tau_max", "inf"]) == 2
    assert "--tau_max must be a finite number, got inf" in capsys.readouterr().err
    assert "--seed must be an integer in [0, 2**32), got -1" in error_of(
        capsys, *TINY, "--seed", "-1")
    assert "--layers 2 has no normal cell" in error_of(capsys, *TINY, "--layers", "2")


def test_ops_are_stripped_and_an_empty_list_is_named(capsys):
    config, _ = cli.search_config("darts", "", ["--ops", " none, skip_connect ,sep_conv_3x3"])
    assert config.primitives == ("none", "skip_connect", "sep_conv_3x3")
    assert cli.meta_config("", ["--ops", "none, skip_connect"])[0].primitives == (
        "none", "skip_connect")
    for text, what in (("", "is empty"), ("none,,skip_connect", "has an empty name")):
        with pytest.raises(SystemExit):
            cli.search_config("darts", "", ["--ops", text])
        assert f"argument --ops: {what}" in capsys.readouterr().err.replace(f"{text!r} ", "")


def test_flags_are_never_abbreviated(capsys):
    with pytest.raises(SystemExit):
        cli.search_config("darts", "", ["--epoch", "2"])
    assert "unrecognized arguments: --epoch 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.meta_config("", ["--iter", "2"])


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help_and_shows_its_default(script, capsys):
    with pytest.raises(SystemExit):
        load_script(script).main(["--help"])
    text = capsys.readouterr().out
    options = re.split(r"\n(?=  -)", text.split("\noptions:\n")[1])
    for option in options:
        name = option.split()[0]
        body = " ".join(option.split())
        assert len(body) > len(name) + 12, f"{name} has no help: {body!r}"
    # A default is shown unless the help says what its absence means.
    flags = ("--seed", "--save", "--ops", "--layers", "--init_channels")
    checked = [o for o in options if o.split()[0].rstrip(",") in flags]
    assert {"--seed", "--save"} <= {o.split()[0].rstrip(",") for o in checked}
    for option in checked:
        assert "(default:" in " ".join(option.split()), option
    # The usage examples keep their line breaks (the scripts' docstrings are raw).
    assert "\\\n        --" in text


def test_a_corrupt_npz_is_named_without_numpy_pickle_advice(tmp_path, capsys):
    bad = tmp_path / "images.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    err = error_of(capsys, "--dataset", bad, "--save", tmp_path / "run")
    assert f"{bad} is not a readable numpy .npz file" in err
    assert "pickle" not in err


# -- the run folder --------------------------------------------------------------------------

def test_save_problems_are_one_line_errors(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "--save is empty" in error_of(capsys, *TINY, "--save", "")
    assert f"--save '{a_file}' is a file, not a folder" in error_of(
        capsys, *TINY, "--save", a_file)
    err = error_of(capsys, *TINY, "--save", a_file / "run")
    assert f"cannot write into the run folder '{a_file / 'run'}'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root ignores the mode
        return
    assert f"cannot write into the run folder '{locked}' (Permission denied)" in error_of(
        capsys, *TINY, "--save", locked)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_run_writes_every_file_with_one_mode(search_run):
    save = search_run("darts")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in save.iterdir() if p.is_file()}
    assert {"genotype.json", "genotype.png", "alphas.png", "metrics.jsonl"} <= modes.keys()
    assert len(set(modes.values())) == 1, modes


def test_a_folder_without_a_checkpoint_is_reused_and_a_finished_run_reports(
        search_run, tmp_path, capsys):
    # A run that stopped before its first checkpoint leaves no settings that refuse a rerun.
    save = tmp_path / "run"
    shutil.copytree(search_run("darts"), save)
    shutil.rmtree(save / "checkpoints")
    stale = json.loads((save / "config.json").read_text())
    (save / "config.json").write_text(json.dumps({**stale, "learning_rate": 0.5}))
    assert darts.main([*TINY, "--save", str(save)]) == 0
    out = capsys.readouterr().out
    # The first step's compilation is announced, then timed.
    assert out.startswith("compiling the search step (once")
    assert re.search(r"\nsearch step (compiled|loaded from the compilation cache) and run "
                     r"once in \d+\.\d s\n", out)
    assert json.loads((save / "config.json").read_text())["learning_rate"] == 0.025
    assert [r["epoch"] for r in read_metrics(save)] == list(range(1, EPOCHS + 1))

    # Rerunning the finished run prints its result again, and compiles nothing.
    assert darts.main([*TINY, "--save", str(save)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"already finished: {save} after epoch {EPOCHS}\nresult: epoch 2: ")
    assert "compiling" not in out
    genotype = jnas.load_genotype(save / "genotype.json", ("none", "max_pool_3x3",
                                                           "skip_connect", "sep_conv_3x3"))
    assert f"derived architecture: {tuple(genotype)}" in out
    assert f"files in {save}: genotype.json" in out


@pytest.mark.parametrize("damage", ["emptied", "item_deleted"])
def test_a_damaged_checkpoint_is_one_message_in_our_words(search_run, tmp_path, capfd, damage):
    save = tmp_path / "run"
    shutil.copytree(search_run("darts"), save)
    last = save / "checkpoints" / str(EPOCHS)
    if damage == "emptied":
        shutil.rmtree(last)
        last.mkdir()
    else:  # the state's item: Orbax's error speaks of a "Composite"
        shutil.rmtree(last / "default")
    assert darts.main([*TINY, "--save", str(save)]) == 2
    err = capfd.readouterr().err
    assert f"the checkpoint {last} could not be read: it is incomplete or damaged" in err
    assert "absl" not in err and "Composite" not in err, err


# -- Ctrl-C ---------------------------------------------------------------------------------

def _interrupt(save, wait_for_line: int, cache: str):
    """Start the tiny search as a script, send SIGINT once it printed `wait_for_line` lines,
    and return (exit status, stdout, stderr)."""
    cmd = [sys.executable, str(ROOT / "experiments" / "darts.py"), *TINY, "--save", str(save),
           "--compile_cache", cache]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    lines = [proc.stdout.readline() for _ in range(wait_for_line)]
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, "".join(lines) + out, err


def _no_half_files(save):
    assert [p for p in save.rglob("*") if p.name.endswith(".tmp")] == []
    checkpoints = sorted(int(p.name) for p in (save / "checkpoints").iterdir() if p.is_dir())
    if checkpoints:  # a checkpoint always has its settings and its metrics lines
        assert (save / "config.json").exists()
        assert [r["epoch"] for r in read_metrics(save)][: len(checkpoints)] == checkpoints
    else:
        assert not (save / "config.json").exists()


def test_ctrl_c_stops_a_run_while_compiling_and_during_an_epoch(tmp_path):
    # While compiling: the cache is off, so the first step compiles for seconds.
    rc, out, err = _interrupt(tmp_path / "a", 1, "none")
    assert out.startswith("compiling the search step")
    assert rc == 130, err
    assert err.strip().splitlines() == [
        "interrupted (Ctrl-C): the run folder keeps the newest checkpoint, if any; rerun the "
        "same command to resume"]
    _no_half_files(tmp_path / "a")
    assert not (tmp_path / "a" / "metrics.jsonl").exists()

    # During the epochs (the step then comes from the tests' compilation cache).
    rc, out, err = _interrupt(tmp_path / "b", 2, os.environ["JNAS_COMPILE_CACHE"])
    assert "run once in" in out
    assert rc == 130 and "Traceback" not in err, err
    _no_half_files(tmp_path / "b")


def test_a_setting_added_since_a_run_was_saved_reads_as_its_default(tmp_path):
    from jnas.evaluation import TrainConfig
    from jnas.loop import check_resumable, config_dict

    path = tmp_path / "config.json"
    saved = config_dict(TrainConfig(save=str(tmp_path)))
    del saved["lr_schedule"]  # a run saved before the field existed
    path.write_text(json.dumps(saved))
    check_resumable(TrainConfig(save=str(tmp_path)), str(path))
    with pytest.raises(jnas.JnasError, match=r"`lr_schedule`: 'cosine' -> 'linear'"):
        check_resumable(TrainConfig(save=str(tmp_path), lr_schedule="linear"), str(path))
