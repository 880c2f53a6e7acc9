import bz2
import gzip
import lzma
import shutil
import subprocess
import time

import numpy as np
import pytest

from cofisearch.datasets import APT_LISTS_DIR, APT_UPDATE_COMMAND, load_debian_descriptions
from cofisearch.datasets.debian import APT_HELPER

# Two suites as apt names them; "shared" and "shared-doc" have one description (same md5),
# "viewer" is in contrib, "gone" has no Packages entry (another architecture's package).
TRANSLATION_MAIN = """\
Package: alpha
Description-md5: 00000000000000000000000000000001
Description-en: Alpha tool for testing
 First paragraph line one,
 line two.
 .
 Second paragraph:
   preformatted line kept indented
 .
 Last line.

Package: shared
Description-md5: 00000000000000000000000000000002
Description-en: Shared summary
 Shared long text.

Package: shared-doc
Description-md5: 00000000000000000000000000000002
Description-en: Shared summary
 Shared long text.

Package: gone
Description-md5: 00000000000000000000000000000003
Description-en: Not in any Packages index
 Nothing.
"""

TRANSLATION_UPDATES = """\
Package: viewer
Description-md5: 00000000000000000000000000000004
Description-en: Image viewer
 Views images.

Package: summary-only
Description-md5: 00000000000000000000000000000005
Description-en: Just a summary
"""

PACKAGES_MAIN = """\
Package: alpha
Version: 1.0
Section: utils
Description: Alpha tool for testing
Description-md5: 00000000000000000000000000000001

Package: shared
Section: libs
Depends: a,
 b

Package: shared-doc
Section: doc

Package: summary-only
Section: misc
"""

PACKAGES_UPDATES = """\
Package: viewer
Section: contrib/graphics
"""

PREFIX = "deb.debian.org_debian_dists_bookworm"


def _write(path, text, compress=None):
    data = text.encode()
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "xz":
        data = lzma.compress(data)
    elif compress == "bz2":
        data = bz2.compress(data)
    path.write_bytes(data)


def _lists(directory, compress=None):
    ext = f".{compress}" if compress else ""
    _write(directory / f"{PREFIX}_main_i18n_Translation-en{ext}", TRANSLATION_MAIN, compress)
    _write(
        directory / f"{PREFIX}-updates_main_i18n_Translation-en{ext}", TRANSLATION_UPDATES, compress
    )
    _write(directory / f"{PREFIX}_main_binary-amd64_Packages{ext}", PACKAGES_MAIN, compress)
    _write(
        directory / f"{PREFIX}-updates_main_binary-amd64_Packages{ext}", PACKAGES_UPDATES, compress
    )
    return directory


@pytest.mark.parametrize("compress", [None, "gz", "xz", "bz2"])
def test_parses_fixture_lists(tmp_path, compress):
    data = load_debian_descriptions(_lists(tmp_path, compress), test_size=1)
    assert data.packages == (("alpha",), ("shared", "shared-doc"), ("summary-only",), ("viewer",))
    assert data.titles == ("Alpha tool for testing", "Shared summary", "Just a summary", "Image viewer")
    assert data.descriptions[0] == (
        "First paragraph line one,\nline two.\n\nSecond paragraph:\n"
        "  preformatted line kept indented\n\nLast line."
    )
    assert data.descriptions[1:] == ("Shared long text.", "", "Views images.")
    assert data.md5[1] == "00000000000000000000000000000002"


def test_sections_stripped_and_labels(tmp_path):
    data = load_debian_descriptions(_lists(tmp_path), test_size=1)
    # "shared" (libs) and "shared-doc" (doc) tie: the alphabetically first wins.
    assert data.sections == ("utils", "doc", "misc", "graphics")
    assert data.section_names == ("doc", "graphics", "misc", "utils")
    np.testing.assert_array_equal(data.labels, [3, 0, 2, 1])
    assert data.labels.dtype == np.int64
    assert data.label_matrix.dtype == np.uint8
    np.testing.assert_array_equal(data.label_matrix, np.eye(4, dtype=np.uint8)[data.labels])


def test_majority_section_wins(tmp_path):
    _lists(tmp_path)
    extra = PACKAGES_MAIN.replace("Section: doc", "Section: libs")
    _write(tmp_path / f"{PREFIX}_main_binary-amd64_Packages", extra)
    _write(tmp_path / f"{PREFIX}_main_binary-i386_Packages", "Package: shared-doc\nSection: doc\n")
    # shared: libs; shared-doc: libs and doc -> libs 2 votes, doc 1.
    assert load_debian_descriptions(tmp_path, test_size=1).sections[1] == "libs"


def test_missing_description_md5_is_computed(tmp_path):
    _lists(tmp_path)
    text = TRANSLATION_MAIN.replace("Description-md5: 00000000000000000000000000000001\n", "")
    _write(tmp_path / f"{PREFIX}_main_i18n_Translation-en", text)
    data = load_debian_descriptions(tmp_path, test_size=1)
    assert data.packages[0] == ("alpha",) and len(data.md5[0]) == 32


def test_bare_file_names(tmp_path):
    _write(tmp_path / "Translation-en", TRANSLATION_MAIN)
    _write(tmp_path / "Packages", PACKAGES_MAIN)
    assert len(load_debian_descriptions(tmp_path, test_size=1).titles) == 2


def test_split_deterministic(tmp_path):
    _lists(tmp_path)
    a = load_debian_descriptions(tmp_path, test_size=2, seed=5)
    b = load_debian_descriptions(tmp_path, test_size=2, seed=5)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert len(a.test) == 2 and a.test.dtype == np.int64
    np.testing.assert_array_equal(np.sort(np.concatenate([a.train, a.test])), np.arange(4))
    assert list(a.test) == sorted(a.test)
    assert len(load_debian_descriptions(tmp_path, test_size=0.5).test) == 2
    assert len(load_debian_descriptions(tmp_path, test_size=0).test) == 0
    splits = {tuple(load_debian_descriptions(tmp_path, test_size=2, seed=s).test) for s in range(8)}
    assert len(splits) > 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(test_size=4), ValueError, "test_size must leave at least one training item"),
        (dict(test_size=1.0), ValueError, "test_size"),
        (dict(test_size=-1), ValueError, "test_size"),
        (dict(test_size="2"), TypeError, "test_size"),
        (dict(test_size=True), TypeError, "test_size"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_debian_descriptions(_lists(tmp_path), **kwargs)


def test_bad_directory_type():
    with pytest.raises(TypeError, match="directory"):
        load_debian_descriptions(3)


def test_missing_lists_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="Translation-en") as info:
        load_debian_descriptions(tmp_path)
    assert APT_UPDATE_COMMAND in str(info.value)
    _write(tmp_path / "Translation-en", TRANSLATION_MAIN)
    with pytest.raises(FileNotFoundError, match="Packages") as info:
        load_debian_descriptions(tmp_path)
    assert APT_UPDATE_COMMAND in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_debian_descriptions(tmp_path / "nowhere")
    assert APT_UPDATE_COMMAND in str(info.value)


def test_no_sectioned_item(tmp_path):
    _write(tmp_path / "Translation-en", TRANSLATION_MAIN)
    _write(tmp_path / "Packages", "Package: other\nSection: misc\n")
    with pytest.raises(ValueError, match="no description"):
        load_debian_descriptions(tmp_path)


@pytest.mark.skipif(
    not APT_HELPER.is_file() or shutil.which("lz4") is None,
    reason="needs apt's apt-helper and the lz4 tool to write an lz4 list",
)
def test_lz4_through_apt_helper(tmp_path):
    plain, lz4 = tmp_path / "plain", tmp_path / "lz4"
    plain.mkdir()
    lz4.mkdir()
    _lists(plain)
    for path in plain.iterdir():
        subprocess.run(["lz4", "-q", str(path), str(lz4 / (path.name + ".lz4"))], check=True)
    expected = load_debian_descriptions(plain, test_size=1)
    got = load_debian_descriptions(lz4, test_size=1)
    assert got.titles == expected.titles and got.descriptions == expected.descriptions
    assert got.sections == expected.sections


def test_corrupt_lz4_list(tmp_path):
    if not APT_HELPER.is_file():
        pytest.skip("needs apt's apt-helper")
    _write(tmp_path / "Translation-en.lz4", "not lz4 at all")
    _write(tmp_path / "Packages", PACKAGES_MAIN)
    with pytest.raises(ValueError, match="cat-file"):
        load_debian_descriptions(tmp_path)


def test_real_apt_lists():
    has = APT_LISTS_DIR.is_dir() and any(
        "Translation-en" in p.name for p in APT_LISTS_DIR.iterdir()
    )
    if not has:
        pytest.skip(f"no Translation-en in {APT_LISTS_DIR}; run as root: {APT_UPDATE_COMMAND}")
    start = time.perf_counter()
    data = load_debian_descriptions(test_size=1000, seed=0)
    elapsed = time.perf_counter() - start
    n = len(data.titles)
    assert n > 1000, f"only {n} items"
    assert len(set(data.md5)) == n
    assert len(data.descriptions) == len(data.packages) == len(data.sections) == n
    assert data.label_matrix.shape == (n, len(data.section_names))
    assert (data.label_matrix.sum(axis=1) == 1).all()
    assert not any("/" in s for s in data.section_names)
    assert len(data.test) == 1000 and len(data.train) == n - 1000
    assert sum(bool(t) for t in data.titles) == n
    print(f"{n} items, {len(data.section_names)} sections, loaded in {elapsed:.1f} s")


def test_max_items_is_a_seeded_subset(tmp_path):
    _lists(tmp_path)
    full = load_debian_descriptions(tmp_path, test_size=1)
    a = load_debian_descriptions(tmp_path, test_size=1, max_items=2, seed=3)
    b = load_debian_descriptions(tmp_path, test_size=1, max_items=2, seed=3)
    assert a.md5 == b.md5 and len(a.md5) == 2
    assert set(a.md5) <= set(full.md5)
    assert list(a.md5) == sorted(a.md5, key=full.md5.index)  # corpus order kept
    np.testing.assert_array_equal(np.sort(np.concatenate([a.train, a.test])), np.arange(2))
    assert a.label_matrix.shape == (2, len(a.section_names))
    assert set(a.sections) == set(a.section_names)
    subsets = {load_debian_descriptions(tmp_path, test_size=1, max_items=2, seed=s).md5
               for s in range(8)}
    assert len(subsets) > 1
    assert load_debian_descriptions(tmp_path, test_size=1, max_items=10).md5 == full.md5


@pytest.mark.parametrize(
    "max_items, error",
    [(1, ValueError), (0, ValueError), (2.0, TypeError), (True, TypeError)],
)
def test_bad_max_items(tmp_path, max_items, error):
    with pytest.raises(error, match="max_items"):
        load_debian_descriptions(_lists(tmp_path), max_items=max_items)


def test_real_apt_lists_subset():
    if not (APT_LISTS_DIR.is_dir() and any("Translation-en" in p.name for p in APT_LISTS_DIR.iterdir())):
        pytest.skip(f"no Translation-en in {APT_LISTS_DIR}; run as root: {APT_UPDATE_COMMAND}")
    data = load_debian_descriptions(max_items=300, test_size=30, seed=0)
    assert len(data.titles) == 300 and len(data.test) == 30
    assert data.md5 == load_debian_descriptions(max_items=300, test_size=30, seed=0).md5
