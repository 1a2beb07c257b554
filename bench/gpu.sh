#!/usr/bin/env bash
# The prepared benchmark run for a GPU machine: one JSON line per measurement (bench/gpu.py).
#   bash bench/gpu.sh            # on the accelerator, within 8 minutes
#   bash bench/gpu.sh --smoke    # tiny sizes on any machine; the test suite runs this
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# jnas from this checkout, installed or not.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ " $* " != *" --smoke "* ]] &&
    ! "$PYTHON" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  echo "no GPU backend in this Python's jax: installing jax[cuda12]" >&2
  "$PYTHON" -m pip install --quiet "jax[cuda12]" >&2 || echo "the install failed; measuring on what jax finds" >&2
fi
# The items share one compilation cache, so that the network's initialisation compiles once.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}"
exec "$PYTHON" bench/gpu.py "$@"
