"""Shared test setup: 4 CPU devices, so that the data-parallel steps are tested on a mesh; a
persistent compilation cache, so that tests which build the same step (and reruns of the
suite) compile it once; and session fixtures that run each tiny search once for every test
that reads its outputs (tests/common.py)."""

import os
import tempfile

import jax
import pytest

# Before anything touches a device. The scripts split batches over all local devices, so
# every end-to-end test runs data-parallel on 4 devices unless it passes --devices.
jax.config.update("jax_num_cpu_devices", 4)
CACHE = os.environ.get(
    "JNAS_TEST_CACHE", os.path.join(tempfile.gettempdir(), "jnas-test-jax-cache")
)
jax.config.update("jax_compilation_cache_dir", CACHE)
# The experiment scripts set their own cache (--compile_cache): the same folder, in tests.
os.environ["JNAS_COMPILE_CACHE"] = CACHE
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def search_run(tmp_path_factory):
    """`search_run(script, *flags)`: the folder of a finished `experiments/<script>.py` run
    with tests/common.py's TINY flags and `flags`, run once per session. Tests that change a
    run's folder work on a copy."""
    from tests.common import TINY, load_script

    runs = {}

    def run(script, *flags):
        flags = tuple(str(f) for f in flags)
        if (script, flags) not in runs:
            save = tmp_path_factory.mktemp(script)
            assert load_script(script).main([*TINY, *flags, "--save", str(save)]) == 0
            runs[script, flags] = save
        return runs[script, flags]

    return run


@pytest.fixture(scope="session")
def tiny_search():
    """`tiny_search(devices=1, **config)`: `(Search, its initial state)` for tests/common.py's
    TINY settings with `config` (e.g. algorithm="gdas"), built once per session; the steps
    it compiles are those of the matching command-line runs."""
    from jnas.search import Search, SearchConfig
    from jnas.sharding import data_mesh
    from tests.common import STEPS_PER_EPOCH, TINY_CONFIG, random_batch

    built = {}

    def build(devices=1, **config):
        key = (devices, tuple(sorted(config.items())))
        if key not in built:
            search = Search(
                SearchConfig(**{**TINY_CONFIG, **config}), 10, STEPS_PER_EPOCH,
                data_mesh(devices),
            )
            state = search.init(jax.random.key(0), random_batch(0)["x"][:2])
            built[key] = search, state
        return built[key]

    return build
