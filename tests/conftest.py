"""Shared test setup: a persistent compilation cache so that tests which build the same
search step (and reruns of the suite) compile it once."""

import os
import tempfile

import jax
import pytest

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("JNAS_TEST_CACHE", os.path.join(tempfile.gettempdir(), "jnas-test-jax-cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture
def key():
    return jax.random.key(0)
