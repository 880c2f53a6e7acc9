"""The real-text path: all-MiniLM-L6-v2 from its package, offline, cached; the Debian
study and ``cofisearch demo --data debian`` on a few hundred packages. The model tests
skip when the ``text`` extra is not installed, the Debian ones when apt's lists are
missing."""

import importlib.util
import io
import socket

import numpy as np
import pytest

from cofisearch.datasets import APT_LISTS_DIR, APT_UPDATE_COMMAND, load_debian_descriptions
from cofisearch.encoders import SentenceEncoder, minilm_model_dir
from cofisearch.encoders import text as text_module

HAS_MODEL = all(
    importlib.util.find_spec(m) is not None
    for m in ("sentence_transformers", "torch", "all_minilm_l6_v2")
)
needs_model = pytest.mark.skipif(
    not HAS_MODEL, reason='needs the text extra: pip install "cofisearch[text]"'
)
HAS_LISTS = APT_LISTS_DIR.is_dir() and any(
    "Translation-en" in p.name for p in APT_LISTS_DIR.iterdir()
)
needs_lists = pytest.mark.skipif(
    not HAS_LISTS, reason=f"no Translation-en in {APT_LISTS_DIR}; run as root: {APT_UPDATE_COMMAND}"
)
N_ITEMS = 300


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cofisearch-cache")


@pytest.fixture(scope="session")
def encoder(cache_dir):
    return SentenceEncoder(cache_dir=cache_dir, num_threads=1)


def test_missing_model_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setattr(text_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"cofisearch\[text\]"):
        minilm_model_dir(tmp_path)


def test_model_dir_must_be_a_sentence_transformers_directory(tmp_path):
    with pytest.raises(ValueError, match="modules.json"):
        SentenceEncoder(tmp_path, cache_dir=tmp_path)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"max_seq_length": 0}, ValueError, "max_seq_length"),
        ({"num_threads": 0}, ValueError, "num_threads"),
        ({"cache_dir": 3}, TypeError, "cache_dir"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    (tmp_path / "modules.json").write_text("[]")
    with pytest.raises(error, match=match):
        SentenceEncoder(tmp_path, **{"cache_dir": tmp_path, **kwargs})


@needs_model
@pytest.mark.parametrize("texts", ["one string", ["ok", 3], b"bytes"])
def test_texts_must_be_strings(encoder, texts):
    with pytest.raises(TypeError, match="texts"):
        encoder.encode(texts)


@needs_model
def test_model_extracted_once_under_the_cache(cache_dir, encoder):
    assert encoder.model_dir.parent == cache_dir / "models"
    assert (encoder.model_dir / "model.safetensors").is_file()
    assert minilm_model_dir(cache_dir) == encoder.model_dir
    assert not [p for p in encoder.model_dir.parent.iterdir() if p.name.startswith(".extract-")]


@needs_model
def test_no_network_while_loading_and_encoding(monkeypatch, cache_dir):
    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    fresh = SentenceEncoder(cache_dir=cache_dir, num_threads=1)
    out = fresh.encode(["offline"], cache=False)
    assert out.shape == (1, 384) and out.dtype == np.float32


@needs_model
@needs_lists
def test_encodes_debian_items_and_reads_the_cache_back(encoder):
    data = load_debian_descriptions(max_items=N_ITEMS)
    titles = list(data.titles)
    path = encoder.cache_path(titles)
    assert not path.exists()
    first = encoder.encode(titles)
    assert first.shape == (N_ITEMS, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    assert path.is_file()
    # A second call reads the entry: poison the model to prove it is not called.
    model, encoder._model = encoder._model, object()
    try:
        again = encoder.encode(titles)
    finally:
        encoder._model = model
    np.testing.assert_array_equal(again, first)
    # The cache follows the texts and the settings.
    assert encoder.cache_path(titles[:-1]) != path
    other = SentenceEncoder(cache_dir=encoder.cache_dir, batch_size=encoder.batch_size + 1)
    assert other.cache_path(titles) != path
    # A title is closer to its own description than to most others.
    desc = encoder.encode(list(data.descriptions[:50]), cache=False)
    ranks = (first[:50] @ desc.T).argsort(axis=1)[:, ::-1]
    assert np.mean(ranks[:, 0] == np.arange(50)) > 0.5


@needs_model
@needs_lists
def test_demo_debian_tiny(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("faiss")
    from cofisearch import cli

    monkeypatch.setenv("COFISEARCH_CACHE_DIR", str(cache_dir))
    out = io.StringIO()
    assert cli.main(["demo", "--data", "debian", "--scale", "tiny", "--quiet",
                     "--out", str(tmp_path)], out=out) == 0
    text = out.getvalue()
    assert "FG float (exhaustive)" in text and "CG sign 384-bit (ubinary)" in text
    assert "sentence-transformers" in text
    assert (tmp_path / "demo_debian.md").is_file() and (tmp_path / "demo_debian.json").is_file()
