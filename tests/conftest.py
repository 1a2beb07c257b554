"""Shared test setup: 4 CPU devices, so that the data-parallel steps are tested on a mesh,
and a persistent compilation cache so that tests which build the same search step (and
reruns of the suite) compile it once."""

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
