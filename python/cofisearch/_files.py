"""File helpers shared by the indexes, the sharded index and the reports."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

__all__ = ["atomic_write", "atomic_write_json", "json_default"]


def atomic_write(path, write, *, mode="wb", prefix=".cofisearch-"):
    """Calls ``write(f)`` on a temporary file beside ``path``, syncs it, then renames it
    over ``path``: a crash at any point leaves the previous file whole."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def json_default(value):
    """``json.dump`` fallback for NumPy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def atomic_write_json(path, payload, *, indent=2, sort_keys=False, prefix=".cofisearch-"):
    """Writes ``payload`` as indented JSON ending in a newline, through
    :func:`atomic_write`; NumPy values are converted by :func:`json_default`."""

    def write(f):
        json.dump(payload, f, indent=indent, sort_keys=sort_keys, default=json_default)
        f.write("\n")

    atomic_write(path, write, mode="w", prefix=prefix)
