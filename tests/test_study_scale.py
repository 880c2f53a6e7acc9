"""The demo's section at scale (cofisearch.study_scale): its sizes are checked before any
work, and what it measures is right, not only timed: exhaustive float is the ground
truth, and every cascade that screens every item as deep as the pool finds all of it."""

import importlib.util

import numpy as np
import pytest
from cofisearch import datasets, study, study_scale

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
N_ITEMS, N_QUERIES, NLIST = 3_000, 40, 16
DEPTHS = (10, 100, N_ITEMS)
NPROBES = (2, NLIST)


@pytest.fixture(scope="module")
def section():
    pytest.importorskip("torch")
    from cofisearch.encoders import DualEncoder

    train = datasets.make_paired(600, 5, seed=0, n_test=100).train
    dual = DualEncoder(512, 300, embed_dim=32, hidden=64, seed=0)
    dual.fit(train.image_features, train.text_features, caption_to_image=train.caption_to_image,
             epochs=1, batch_size=256)
    return study_scale.run_scale(dual, train.text_features, n_items=N_ITEMS, n_queries=N_QUERIES,
                                 first_image=600, nbits=(64, 32), depths=DEPTHS, nlist=NLIST,
                                 nprobes=NPROBES, repeats=1)


def rows_of(section, contender, nprobe=None):
    return [r for r in section.rows if r["contender"] == contender and r["nprobe"] == nprobe]


def test_every_contender_at_every_setting(section):
    grid = 1 + len(DEPTHS) + 2 * len(NPROBES) * len(DEPTHS)
    assert len(section.rows) in (grid, grid + 1)  # + the tuned setting when off the grid
    assert {r["contender"] for r in section.rows} == set(study_scale.CONTENDERS)
    assert section.config["nbits"] == 32  # ITQ gives at most embed_dim bits
    assert all(r["ms/query"] > 0 for r in section.rows)
    assert section.summary and all(isinstance(line, str) for line in section.summary)


def test_exhaustive_float_is_the_ground_truth(section):
    (row,) = rows_of(section, "exhaustive float")
    assert row["recall@10"] == 1.0 and row["speedup"] == 1.0


def test_screening_every_item_finds_the_exact_top_10(section):
    # The rerank scores equal the exhaustive scores bit for bit, ties by the smaller id.
    (row,) = [r for r in rows_of(section, "exhaustive cascade") if r["n_candidates"] == N_ITEMS]
    assert row["recall@10"] == 1.0
    for contender in study_scale.CONTENDERS[2:]:
        (row,) = [r for r in rows_of(section, contender, NLIST) if r["n_candidates"] == N_ITEMS]
        assert row["recall@10"] == 1.0


def test_recall_grows_with_the_depth(section):
    # A deeper screen keeps what a shallower one kept, and the rerank keeps a true item
    # exactly when the screen did.
    curves = [rows_of(section, "exhaustive cascade")]
    curves += [rows_of(section, c, p) for c in study_scale.CONTENDERS[2:] for p in NPROBES]
    for rows in curves:
        recalls = [recall for _, recall in sorted((r["n_candidates"], r["recall@10"]) for r in rows)]
        assert recalls == sorted(recalls)


def test_codes_screen_for_the_float_ranking(section):
    # 32-bit ITQ codes of a one-epoch model's embeddings: a screen of 1/30 of the pool
    # keeps several times the 1/30 of the top 10 that a random screen would (0.34 here).
    (row,) = [r for r in rows_of(section, "exhaustive cascade") if r["n_candidates"] == 100]
    assert row["recall@10"] >= 0.2


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_plot_is_a_png(section, tmp_path):
    path = tmp_path / "scale.png"
    assert study_scale.plot_scale(section.rows, str(path), "tiny")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


SIZE_ERRORS = [
    ({"n_items": -1}, ValueError, "scale_items"),
    ({"n_items": 2.5}, TypeError, "scale_items"),
    ({"n_items": 100}, ValueError, "at least"),
    ({"n_items": 10**13}, ValueError, "GiB"),
    ({"n_items": 10_000, "n_queries": 0}, ValueError, "scale_queries"),
]


@pytest.mark.parametrize("kwargs, error, words", SIZE_ERRORS, ids=[str(e[0]) for e in SIZE_ERRORS])
def test_sizes_are_checked(kwargs, error, words):
    args = {"embed_dim": 128, "nbits": (64, 128), "n_queries": 100} | kwargs
    with pytest.raises(error, match=words):
        study_scale.check_scale_items(args.pop("n_items"), **args)


def test_zero_items_skip_the_section():
    assert study_scale.check_scale_items(0, embed_dim=64, nbits=(64,), n_queries=1) == 0


def test_run_study_refuses_what_cannot_fit_before_training(monkeypatch):
    pytest.importorskip("torch")
    import cofisearch.encoders

    class NoTraining:
        def __init__(self, *args, **kwargs):
            raise AssertionError("training started before the sizes were checked")

    monkeypatch.setattr(cofisearch.encoders, "DualEncoder", NoTraining)
    with pytest.raises(ValueError, match="scale_items=10000000000000 needs about"):
        study.run_study(**(study.DEMO_SCALES["tiny"] | {"scale_items": 10**13}))


def test_memory_grows_with_the_items_and_the_widths():
    small = study_scale.bytes_needed(10**6, 128, 128)
    assert study_scale.bytes_needed(2 * 10**6, 128, 128) > small
    assert study_scale.bytes_needed(10**6, 256, 128) > small
    # A million 128-d captions (the demo's default): about 2 GiB (the whole demo's peak
    # resident size was 1.6 GiB).
    assert small < 2.5 * 2**30


@pytest.mark.parametrize("n, nlist", [(1_000_000, 1024), (20_000, 128), (5_000_000, 2048),
                                      (100, 16), (10, 10)])
def test_default_nlist_is_near_the_square_root(n, nlist):
    assert study_scale.default_nlist(n) == nlist


def test_scale_nbits_stays_within_what_itq_gives():
    assert study_scale.scale_nbits((64, 128), 128) == 128
    assert study_scale.scale_nbits((64, 128), 64) == 64
    assert study_scale.scale_nbits((256,), 100) == 96
    with pytest.raises(ValueError, match="embed_dim"):
        study_scale.scale_nbits((64,), 4)


def test_presets_stream_a_million_captions_at_the_default_scale():
    assert study.DEMO_SCALES["small"]["scale_items"] >= 1_000_000
    assert study.DEMO_SCALES["tiny"]["scale_items"] < study.DEMO_SCALES["small"]["scale_items"]
    assert np.all([p["scale_queries"] <= 1_000 for p in study.DEMO_SCALES.values()])
