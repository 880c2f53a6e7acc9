"""The on-disk layout of a saved sharded index: ``manifest.json`` and the shard files.

Format ``cofisearch-sharded`` version 2: a JSON object with ``format``, ``version``,
``kind`` (``"binary"``, ``"float"`` or ``"cascade"``), ``n_shards``, ``ntotal`` (items
present), ``next_id`` (the id the next item added without ids gets), a human-readable
``routing`` note, the layout (``nbits`` and/or ``dim`` and ``metric``, plus
``n_candidates`` and ``screen`` for a cascade) and one ``shards`` entry per shard: its
number ``shard`` (its place in the list, so that an entry moved is refused), its ``count``
of items, ``sequential`` (whether its files hold the shard ids ``0 .. count -
1`` and nothing else was ever added or removed, which lets the shard keep no id map),
its ``files``, one file name per suffix of the kind (:data:`SUFFIXES`), each a file in
the engine's format (see :func:`cofisearch.load_index`) inside the manifest's directory,
and ``checksums``, the CRC-32 each of those files stores in its header, in the same
order, so that a file swapped with another shard's or an entry moved is refused at load.

Item ``g`` lives on shard ``g % n_shards`` under the id ``g // n_shards``, which the
shard's files keep (a file written without ids holds the ids ``0 .. count - 1``).

Version 1 (written before the caller's ids existed) still loads: its shards hold the
items ``0 .. ntotal - 1`` dealt round-robin, each ``count`` fixed by that and each entry
carrying its id range ``{"start", "step", "stop"}``; :func:`read_manifest` gives it the
version-2 fields (``next_id`` = ``ntotal``, every shard ``sequential``). Manifests
written before ``checksums`` existed load without that check.
"""

from __future__ import annotations

import json
import os

from .._files import atomic_write_json
from .._index import BinaryIndex, FloatIndex

MANIFEST = "manifest.json"
FORMAT = "cofisearch-sharded"
FORMAT_VERSION = 2
# The version before the caller's ids: round-robin counts, no next_id, no sequential.
_ROUND_ROBIN_VERSION = 1
# One past the largest int64 id.
_ID_LIMIT = 1 << 63
# Which files a shard writes, per kind, in the order of the shard's indexes.
SUFFIXES = {"binary": ("codes",), "float": ("vectors",), "cascade": ("codes", "vectors")}


def shard_counts(ntotal, n_shards):
    """Items per shard under version 1's round-robin routing of the ids ``0 .. ntotal -
    1`` (shard ``s`` holds ids ``s, s + n_shards, ...``)."""
    return [len(range(s, ntotal, n_shards)) for s in range(n_shards)]


def shard_file_names(kind, n_shards, token):
    """Per shard, ``{suffix: file name}`` for one save; ``token`` keeps the names of two
    saves apart, so that a new save never overwrites the files the old manifest names."""
    return [
        {suffix: f"shard-{s:05d}-{token}.{suffix}.cfs" for suffix in SUFFIXES[kind]}
        for s in range(n_shards)
    ]


def write_manifest(directory, *, kind, counts, next_id, sequential, file_names, checksums,
                   extra):
    """Writes ``directory/manifest.json`` atomically, for shards holding ``counts`` items
    (``sequential`` per shard, as in the module docstring) in ``file_names`` (from
    :func:`shard_file_names`) whose header checksums are ``checksums`` (per shard, one per
    file); ``extra`` adds the layout fields."""
    n_shards = len(counts)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "n_shards": n_shards,
        "ntotal": sum(counts),
        "next_id": next_id,
        "routing": "by id: item g on shard g % n_shards, as shard id g // n_shards",
        "shards": [
            {
                "shard": s,
                "count": counts[s],
                "sequential": bool(sequential[s]),
                "files": file_names[s],
                "checksums": list(checksums[s]),
            }
            for s in range(n_shards)
        ],
        **extra,
    }
    atomic_write_json(
        os.path.join(directory, MANIFEST), manifest, sort_keys=True, prefix=".manifest-"
    )


def _is_int(x):
    return type(x) is int  # True and 1.0 are not counts


def read_manifest(directory):
    """The manifest in ``directory``, checked, in version 2's fields whatever version it
    was written in; ``ValueError`` naming the file and the problem when it is missing,
    unreadable or inconsistent."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except OSError as exc:
        raise ValueError(
            f"cannot read sharded index manifest {path!r}: {exc.strerror or exc}"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path!r} is not a valid sharded index manifest: {exc}") from exc

    def bad(problem):
        return ValueError(f"{path!r} is not a valid sharded index manifest: {problem}")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise bad(f"expected format {FORMAT!r}")
    version = manifest.get("version")
    if not _is_int(version) or version not in (_ROUND_ROBIN_VERSION, FORMAT_VERSION):
        raise bad(
            f"format version {version!r} is not supported (this build reads "
            f"{_ROUND_ROBIN_VERSION} and {FORMAT_VERSION})"
        )
    kind = manifest.get("kind")
    if not isinstance(kind, str) or kind not in SUFFIXES:  # a list or dict is unhashable
        raise bad(f"kind must be one of {sorted(SUFFIXES)}, got {kind!r}")
    n_shards, ntotal = manifest.get("n_shards"), manifest.get("ntotal")
    if not _is_int(n_shards) or n_shards < 1 or not _is_int(ntotal) or ntotal < 0:
        raise bad(f"corrupt shard count {n_shards!r} or item count {ntotal!r}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) != n_shards:
        raise bad(f"expected {n_shards} shard entries")
    if version == _ROUND_ROBIN_VERSION:
        _check_round_robin(shards, ntotal, n_shards, bad)
        manifest["next_id"] = ntotal
        for entry in shards:
            entry["sequential"] = True
    else:
        next_id = manifest.get("next_id")
        if not _is_int(next_id) or not ntotal <= next_id <= _ID_LIMIT:
            raise bad(f"next_id must be an int in [{ntotal}, 2**63], got {next_id!r}")
        _check_counts(shards, ntotal, bad)
    for s, entry in enumerate(shards):
        files = entry["files"]
        if not isinstance(files, dict) or sorted(files) != sorted(SUFFIXES[kind]) or not all(
            isinstance(n, str) and n and os.path.basename(n) == n for n in files.values()
        ):
            raise bad(f"shard {s} must name files {list(SUFFIXES[kind])} inside the directory")
        checksums = entry.get("checksums")
        if checksums is not None and not (
            isinstance(checksums, list)
            and len(checksums) == len(files)
            and all(_is_int(c) and 0 <= c < 2**32 for c in checksums)
        ):
            raise bad(f"shard {s} checksums must be {len(files)} CRC-32 values, got {checksums!r}")
    return manifest


def _check_round_robin(shards, ntotal, n_shards, bad):
    for s, (entry, count) in enumerate(zip(shards, shard_counts(ntotal, n_shards))):
        if not isinstance(entry, dict):
            raise bad(f"shard {s} entry must be an object, got {entry!r}")
        if entry.get("count") != count or not isinstance(entry.get("files"), dict):
            raise bad(f"shard {s} entry is corrupt (round-robin routing gives it {count} items)")


def _check_counts(shards, ntotal, bad):
    for s, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise bad(f"shard {s} entry must be an object, got {entry!r}")
        count = entry.get("count")
        if not _is_int(count) or count < 0 or not isinstance(entry.get("files"), dict):
            raise bad(f"shard {s} entry is corrupt (count {count!r})")
        if not _is_int(entry.get("shard")) or entry["shard"] != s:
            raise bad(f"shard {s} entry says it is shard {entry.get('shard')!r} (entries moved?)")
        if type(entry.get("sequential")) is not bool:
            raise bad(f"shard {s} sequential must be true or false, got {entry.get('sequential')!r}")
    if sum(entry["count"] for entry in shards) != ntotal:
        raise bad(f"the shards' counts add up to {sum(e['count'] for e in shards)}, not ntotal {ntotal}")


def shard_paths(directory, kind, file_names):
    """Per shard, the paths of its files (``file_names`` as in a manifest's ``files``),
    in the order of the shard's indexes."""
    suffixes = SUFFIXES[kind]
    return [tuple(os.path.join(directory, names[x]) for x in suffixes) for names in file_names]


def layout_fields(templates):
    """The manifest fields describing the layout of empty index ``templates``."""
    out = {}
    for t in templates:
        if isinstance(t, BinaryIndex):
            out["nbits"] = t.nbits
        else:
            out["dim"] = t.dim
            out["metric"] = t.metric
    return out


def template_from_manifest(manifest, kind=None):
    """An empty index of the layout the manifest records for ``kind`` (default: the
    manifest's own kind; ``"binary"`` or ``"float"`` for the halves of a cascade)."""
    kind = kind or manifest["kind"]
    try:
        if kind == "binary":
            return BinaryIndex(manifest["nbits"])
        return FloatIndex(manifest["dim"], metric=manifest["metric"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"sharded index manifest has a corrupt layout: {exc!r}") from None
