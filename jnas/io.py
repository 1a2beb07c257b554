"""The one way jnas writes a file: atomically, so a reader or a crash never sees half of it;
and the lock that keeps an interruption (Ctrl-C, `jnas.cli`) out of a run's writes."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from pathlib import Path

# Held while a run writes its files and checkpoint; the command line's Ctrl-C handler takes
# it before it exits, so an interrupted run leaves the last complete unit, never half of one.
WRITING = threading.RLock()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file next to `path` for writing (`mode` "w" or "wb"); on success it
    replaces `path`, on an error it is removed and `path` is left as it was. The file gets
    the mode a plain `open` would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    with WRITING:
        # os.open applies the umask to 0o666, as open() does; tempfile.mkstemp would give 0600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, value) -> Path:
    return write_text(path, json.dumps(value, indent=2) + "\n")
