"""Debian's package descriptions: real short-text -> long-text retrieval with category labels.

apt keeps, per configured suite, a ``Translation-en`` list (each package's one-line
summary and long description, written by its maintainers) and a ``Packages`` index
(among others each package's ``Section``). :func:`load_debian_descriptions` reads them
from apt's list directory, offline: the lists come from
``apt-get update -o Acquire::Languages=en`` (as root), run once beforehand.

Summary -> description is an instance-level task (one relevant item per query, like
caption -> image); ``Section`` gives category labels for mAP (like the FiCo-ITR study's
dataset labels).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._checks import check_float, check_int, check_path

__all__ = [
    "APT_HELPER",
    "APT_LISTS_DIR",
    "APT_UPDATE_COMMAND",
    "DebianDescriptions",
    "load_debian_descriptions",
]

#: Where apt keeps its downloaded lists.
APT_LISTS_DIR = Path("/var/lib/apt/lists")

#: The command that fetches the lists this loader reads.
APT_UPDATE_COMMAND = "apt-get update -o Acquire::Languages=en"

#: apt's helper; ``cat-file`` decompresses every format apt stores its lists in.
APT_HELPER = Path("/usr/lib/apt/apt-helper")

_PYTHON_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".lzma": lzma.open, ".bz2": bz2.open}
_SUFFIXES = r"(\.(?:gz|xz|lzma|bz2|lz4|zst))?"
# apt names a list <mirror path with / as _>_Translation-en[.ext]; a directory a user
# assembles may hold the bare names.
_TRANSLATION = re.compile(r"(?:^|_)Translation-en" + _SUFFIXES + "$")
_PACKAGES = re.compile(r"(?:^|_)Packages" + _SUFFIXES + "$")


class DebianDescriptions(NamedTuple):
    """Debian's package descriptions, one item per distinct description.

    Items are sorted by their first package name. ``train`` and ``test`` are sorted,
    disjoint item indices that together cover every item.
    """

    #: One-line summaries (the first line of ``Description-en``), one per item.
    titles: tuple[str, ...]
    #: Long descriptions, paragraphs separated by an empty line; ``""`` when a package
    #: has only a summary.
    descriptions: tuple[str, ...]
    #: Every package that shares the item's description, sorted.
    packages: tuple[tuple[str, ...], ...]
    #: ``Description-md5`` of each item (its identity).
    md5: tuple[str, ...]
    #: Each item's section name, without a component prefix.
    sections: tuple[str, ...]
    #: The distinct section names, sorted; ``labels`` index into it.
    section_names: tuple[str, ...]
    #: Integer section id per item, int64 of shape (n,).
    labels: np.ndarray
    #: One-hot section matrix, uint8 of shape (n, len(section_names)), the multi-hot
    #: layout :mod:`cofisearch.metrics` takes for mAP.
    label_matrix: np.ndarray
    #: Item indices of the training split, int64, sorted.
    train: np.ndarray
    #: Item indices of the test split, int64, sorted.
    test: np.ndarray


def _missing(what: str, directory: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"no {what} list in {str(directory)!r}; fetch the lists once, as root, with: "
        f"{APT_UPDATE_COMMAND}"
    )


def _find_lists(directory: Path, pattern: re.Pattern) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and pattern.search(p.name)
    )


def _lines(path: Path) -> Iterator[str]:
    """The list's lines, decompressed: by Python where it can, else streamed through
    apt-helper (lz4 and zstd have no module in Python's standard library)."""
    suffix = path.suffix
    if suffix in _PYTHON_OPENERS:
        with _PYTHON_OPENERS[suffix](path, "rt", encoding="utf-8", errors="replace") as handle:
            yield from handle
        return
    if suffix not in (".lz4", ".zst"):
        with open(path, encoding="utf-8", errors="replace") as handle:
            yield from handle
        return
    helper = APT_HELPER if APT_HELPER.is_file() else shutil.which("apt-helper")
    if helper is None:
        raise ValueError(
            f"{str(path)!r} is {suffix[1:]}-compressed, which needs {APT_HELPER} (from apt) "
            "to read; install apt, or decompress the list first"
        )
    with subprocess.Popen(
        [str(helper), "cat-file", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        with io.TextIOWrapper(process.stdout, encoding="utf-8", errors="replace") as handle:
            yield from handle
        error = process.stderr.read()
    if process.returncode:
        raise ValueError(
            f"{helper} cat-file could not read {str(path)!r}: "
            f"{error.decode(errors='replace').strip()}"
        )


def _stanzas(path: Path) -> Iterator[dict[str, str]]:
    """deb822 stanzas as {field: value}; a continuation line (leading space or tab) is
    appended to its field's value after a newline, as written."""
    fields: dict[str, str] = {}
    last = None
    for line in _lines(path):
        line = line.rstrip("\n")
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line
        else:
            name, _, value = line.partition(":")
            last = name.strip()
            fields[last] = value.strip()
    if fields:
        yield fields


def _split_description(value: str) -> tuple[str, str]:
    """Summary and long description from a ``Description`` value: continuation lines lose
    their one leading space, a line " ." is an empty line (a paragraph break)."""
    title, *rest = value.split("\n")
    lines = ["" if line.strip() == "." else line[1:].rstrip() for line in rest]
    return title.strip(), "\n".join(lines).strip("\n")


def _check_test_size(test_size, n: int) -> int:
    if isinstance(test_size, float):
        fraction = check_float(test_size, "test_size", above=0.0, below=1.0)
        n_test = round(fraction * n)
    else:
        n_test = check_int(test_size, "test_size", minimum=0)
    if n_test >= n:
        raise ValueError(
            f"test_size must leave at least one training item: got {test_size!r}, "
            f"which is {n_test} of {n} items"
        )
    return n_test


def load_debian_descriptions(
    directory: str | os.PathLike[str] | None = None,
    *,
    test_size: float = 0.1,
    seed: int = 0,
    max_items: int | None = None,
) -> DebianDescriptions:
    """Load Debian's package descriptions and sections from apt's lists, offline.

    Parameters
    ----------
    directory : folder holding the lists; default :data:`APT_LISTS_DIR`. Every
        ``*Translation-en`` and ``*Packages`` file in it is read (all suites, e.g.
        bookworm, bookworm-updates, bookworm-security), plain or compressed (gz, xz,
        lzma, bz2 by Python; lz4 and zst, apt's default, through
        ``/usr/lib/apt/apt-helper cat-file``).
    test_size : an int is the number of test items, a float in (0, 1) the fraction of
        items (rounded); at least one item must stay for training.
    seed : seeds the split, which depends only on it, ``test_size`` and the items.
    max_items : keep a seeded random subset of at most this many items (drawn before
        the split, in the same sorted order), for quick runs such as CI's; default all.

    One item per distinct ``Description-md5``: packages sharing a description (and a
    package's versions across suites that did not change it) are one item whose
    ``packages`` lists them all. A package whose description changed between suites
    appears in one item per description.

    An item's section is the most common ``Section`` among its packages in the
    ``Packages`` indexes (each package and section counted once), ties broken by the
    alphabetically first name. The component prefix is stripped ("contrib/games",
    "non-free/games" -> "games"), so sections mean the same in every component. Items
    none of whose packages is in a ``Packages`` index (``Translation-en`` covers every
    architecture, the indexes only the configured ones) are left out.

    Raises
    ------
    FileNotFoundError : the directory, its ``Translation-en`` or its ``Packages``
        lists are missing; the message names the command that fetches them,
        ``apt-get update -o Acquire::Languages=en``.
    ValueError : a compressed list cannot be read, or the lists hold no item with a
        section.
    """
    directory = APT_LISTS_DIR if directory is None else check_path(directory, "directory")
    seed = check_int(seed, "seed", minimum=0)
    if max_items is not None:
        max_items = check_int(max_items, "max_items", minimum=2)
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, (int, float, np.integer)):
        raise TypeError(
            f"test_size must be an int (a count) or a float (a fraction), got "
            f"{type(test_size).__name__} {test_size!r}"
        )
    if not directory.is_dir():
        raise FileNotFoundError(
            f"directory {str(directory)!r} does not exist or is not a directory; apt's "
            f"lists are fetched, as root, with: {APT_UPDATE_COMMAND}"
        )
    translations = _find_lists(directory, _TRANSLATION)
    if not translations:
        raise _missing("Translation-en", directory)
    indexes = _find_lists(directory, _PACKAGES)
    if not indexes:
        raise _missing("Packages", directory)

    texts: dict[str, tuple[str, str]] = {}
    names: dict[str, set[str]] = {}
    for path in translations:
        for stanza in _stanzas(path):
            package, value = stanza.get("Package"), stanza.get("Description-en")
            if not package or value is None:
                continue
            # apt's md5 is over the description as written plus a newline; recompute it
            # only where a list omits the field.
            md5 = stanza.get("Description-md5") or hashlib.md5(
                (value + "\n").encode()
            ).hexdigest()
            texts.setdefault(md5, _split_description(value))
            names.setdefault(md5, set()).add(package)

    package_sections: dict[str, set[str]] = {}
    for path in indexes:
        for stanza in _stanzas(path):
            package, section = stanza.get("Package"), stanza.get("Section")
            if package and section:
                package_sections.setdefault(package, set()).add(section.rsplit("/", 1)[-1])

    items = []
    for md5, packages in names.items():
        votes = Counter(s for p in packages for s in package_sections.get(p, ()))
        if votes:
            section = min(votes, key=lambda s: (-votes[s], s))
            items.append((tuple(sorted(packages)), md5, section))
    if not items:
        raise ValueError(
            f"the lists in {str(directory)!r} hold no description whose package has a "
            "Section in a Packages index"
        )
    items.sort()
    if max_items is not None and max_items < len(items):
        # Its own stream of the seed, so that the subset and the split do not correlate.
        keep = np.random.default_rng([seed, 1]).choice(len(items), max_items, replace=False)
        items = [items[i] for i in np.sort(keep)]

    n = len(items)
    n_test = _check_test_size(test_size, n)
    order = np.random.default_rng(seed).permutation(n)
    section_names = tuple(sorted({section for _, _, section in items}))
    ids = {name: i for i, name in enumerate(section_names)}
    labels = np.array([ids[section] for _, _, section in items], dtype=np.int64)
    label_matrix = np.zeros((n, len(section_names)), dtype=np.uint8)
    label_matrix[np.arange(n), labels] = 1
    return DebianDescriptions(
        titles=tuple(texts[md5][0] for _, md5, _ in items),
        descriptions=tuple(texts[md5][1] for _, md5, _ in items),
        packages=tuple(packages for packages, _, _ in items),
        md5=tuple(md5 for _, md5, _ in items),
        sections=tuple(section for _, _, section in items),
        section_names=section_names,
        labels=labels,
        label_matrix=label_matrix,
        train=np.sort(order[n_test:]).astype(np.int64),
        test=np.sort(order[:n_test]).astype(np.int64),
    )
