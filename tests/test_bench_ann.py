"""The approximate contenders of the benchmarks (issue 13): the walk that finds each
contender's cheapest setting reaching a recall, and the complete Table 7 at its tiny
size. Nothing here is timed against anything."""

import importlib.util

import numpy as np
import pytest

from cofisearch._bench import contenders, sections
from cofisearch._bench.contenders import AnnContender, recall_at, smallest_reaching

HAS_FAISS = importlib.util.find_spec("faiss") is not None


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.3, 0.75, 1.0])
def test_smallest_reaching_finds_the_first_value_of_a_growing_recall(seed, target):
    rng = np.random.default_rng(seed)
    hi = int(rng.integers(1, 300))
    curve = np.sort(rng.random(hi + 1))  # recall_of(v) = curve[v], growing with v
    calls = []

    def recall_of(v):
        calls.append(v)
        return curve[v]

    v, tried = smallest_reaching(recall_of, 1, hi, target)
    reaching = [u for u in range(1, hi + 1) if curve[u] >= target]
    assert v == (reaching[0] if reaching else None)
    assert tried == sorted((u, curve[u]) for u in set(calls))
    assert len(calls) == len(set(calls))  # no setting run twice
    assert len(calls) <= 2 * (hi.bit_length() + 1)


def test_recall_at_ignores_padding():
    truth = np.array([[1, 2, -1], [4, 5, 6]])
    ids = np.array([[2, 9, -1], [6, 5, 4]])
    assert recall_at(ids, truth) == pytest.approx((0.5 + 1.0) / 2)


class _Knobs(AnnContender):
    """Recall = min(1, a * b / 100) for settings {"a", "b"}: a known surface."""

    name = "fake"
    family = "float"

    def __init__(self, chains, narrow=False):
        self.chains = chains
        self.chains_narrow = narrow
        self.calls = []

    def search(self, setting, data, rows, k):
        self.calls.append(dict(setting))
        nq = rows.stop - rows.start
        share = min(1.0, setting["a"] * setting["b"] / 100)
        found = round(share * k)
        # The first `found` of each row are the true ids 0..k-1.
        return np.array([[*range(found), *range(100, 100 + k - found)]] * nq)


def test_finalists_give_each_chain_its_cheapest_setting():
    truth = np.tile(np.arange(10), (3, 1))
    c = _Knobs([({"b": 10}, "a", 1, 64), ({"b": 50}, "a", 1, 64), ({"b": 1}, "a", 1, 64)])
    finalists, tried = c.finalists(0.8, None, truth, 10)
    # b=10 needs a=8; b=50 needs a=2 (1.0 >= 0.8 at a=2: 100/100); b=1 never (a <= 64).
    assert [s for s, _ in finalists] == [{"b": 10, "a": 8}, {"b": 50, "a": 2}]
    assert [r for _, r in finalists] == pytest.approx([0.8, 1.0])
    assert {(t[0]["b"], t[0]["a"]) for t in tried} >= {(10, 8), (50, 2), (1, 64)}


def test_narrowing_chains_never_search_past_the_previous_answer():
    truth = np.tile(np.arange(10), (2, 1))
    c = _Knobs([({"b": 10}, "a", 1, 64), ({"b": 20}, "a", 1, 64)], narrow=True)
    finalists, _ = c.finalists(0.8, None, truth, 10)
    assert [s for s, _ in finalists] == [{"b": 10, "a": 8}, {"b": 20, "a": 4}]
    assert max(s["a"] for s in c.calls if s["b"] == 20) <= 8


def test_an_exhaustive_contender_is_one_setting():
    truth = np.tile(np.arange(10), (2, 1))
    c = _Knobs([])
    c.search = lambda setting, data, rows, k: truth[rows]
    assert c.finalists(0.99, None, truth, 10) == ([({}, 1.0)], [({}, 1.0)])


def test_cross_modal_data_shares_the_vectors_between_code_widths():
    sets = sections.cross_modal_data(600, 50, 32, 16, code_bits=(32,))
    assert sorted(sets) == [16, 32]
    a, b = sets[16], sets[32]
    assert a.vectors is b.vectors and a.query_vectors is b.query_vectors
    assert a.codes.shape == (600, 2) and b.query_codes.shape == (50, 4)
    assert np.allclose(np.linalg.norm(a.vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(a.query_vectors, axis=1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def table7():
    return sections.table7_ann(**sections.TABLE7_SIZES["tiny"], repeat=1)


def test_table7_has_the_studys_rows_and_ours(table7):
    rows = {(r["row"], r["index"].split(" ")[0]) for r in table7["rows"]}
    expected = {("FG Flat", "cofisearch"), ("CG Flat", "cofisearch"), ("cascade", "cofisearch")}
    if HAS_FAISS:
        expected |= {("FG Flat", "faiss"), ("FG HNSW", "faiss"), ("CG Flat", "faiss"),
                     ("CG IVF", "faiss")}
    assert rows == expected


def test_table7_recalls_are_the_studys_measures(table7):
    for r in table7["rows"]:
        hits = [r["recall_at"][str(k)] for k in sections.TABLE7_RECALL_AT]
        assert hits == sorted(hits) and 0 <= hits[0] and hits[-1] <= 100
        assert r["search_s"] > 0 and r["build_s"] >= 0
        assert r["frontier"]
    flat = [r for r in table7["rows"] if r["row"] == "FG Flat"]
    assert all(r["recall_at"]["1"] == 100.0 and r["recall_at_10"] == 1.0 for r in flat)


def test_table7_cascades_run_at_the_tuned_settings_and_the_depth(table7):
    # Two cascades: the IVF screened by Hamming distances and by asymmetric estimates.
    cascades = [r for r in table7["rows"] if r["row"] == "cascade"]
    assert sorted("asymmetric" in r["index"] for r in cascades) == [False, True]
    for cascade in cascades:
        assert set(cascade["setting"]) == {"nprobe", "n_candidates"}
        assert cascade["setting"]["n_candidates"] >= table7["depth"]
        tried = {p["setting"]["nprobe"] for p in cascade["frontier"]}
        assert cascade["setting"]["nprobe"] in tried


def test_the_contenders_module_lists_the_approximate_contenders():
    for name in ("AnnData", "AnnContender", "CofiIVFCascade", "FaissHNSW", "FaissIVF",
                 "asymmetric_coarse"):
        assert name in contenders.__all__
