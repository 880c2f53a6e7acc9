"""File helpers shared by the indexes, the sharded index and the reports."""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat

import numpy as np

__all__ = ["atomic_write", "atomic_write_json", "byte_chunks", "json_default"]


def atomic_write(path, write, *, mode="wb", prefix=".cofisearch-"):
    """Calls ``write(f)`` on a temporary file beside ``path``, syncs it, then renames it
    over ``path`` and syncs the directory: a crash at any point leaves the previous file
    whole, and a completed call survives a power cut.

    A symbolic link at ``path`` is followed (its target is replaced, the link kept). The
    new file gets the mode of the file it replaces, or the process umask's default for a
    new file, like a file opened for writing. Temporary files that a killed writer on
    this host left behind in the directory are removed.
    """
    target = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(target)
    _remove_orphans(directory, prefix)
    try:
        file_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        file_mode = None
    tmp = os.path.join(directory, _temp_name(prefix))
    # O_EXCL: never write through a file or link that appeared under this name; 0o666 is
    # narrowed by the umask, as open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if file_mode is not None:
            os.fchmod(fd, file_mode)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(directory)


# Temporary names carry the host and the process id, so that a later writer can tell an
# orphan (its process is gone) from a file another live writer is still filling.
_HOST = socket.gethostname().replace("-", "_") or "host"


def _temp_name(prefix):
    return f"{prefix}{_HOST}-{os.getpid()}-{secrets.token_hex(8)}.tmp"


def _remove_orphans(directory, prefix):
    start = f"{prefix}{_HOST}-"
    try:
        names = os.listdir(directory)
    except OSError:
        return  # the write itself will report what is wrong with the directory
    for name in names:
        if not (name.startswith(start) and name.endswith(".tmp")):
            continue
        pid = name[len(start) :].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass  # another writer removed it first, or it is not ours to remove


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _sync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories; the rename itself is done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def byte_chunks(flat, chunk=1 << 24):
    """Successive slices of at most ``chunk`` bytes of the 1-D uint8 array ``flat``: a
    large index is checksummed and written without one call holding all of it."""
    for start in range(0, flat.size, chunk):
        yield flat[start : start + chunk]


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
