"""Result checks of the benchmarks: each returns a list of human-readable problems, empty
when the results are right. Built on :mod:`cofisearch._reference`.

Hamming results are checked exactly (every reported distance is the true distance of
the reported id, in ascending order); inner-product results the ScaNN way, by
recomputing the scores of the returned ids in float64 (near-ties may order differently
between kernels, so ids are not compared); contenders of one group must agree on their
top-k distances.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _reference
from .contenders import BINARY, result_arrays

__all__ = ["agreement_problems", "float_problems", "group_problems", "hamming_problems"]

# A few queries suffice to catch a wrong kernel, and keep the float recomputation
# (queries x k x dim in float64) small at d = 2048.
CHECKED_QUERIES = 32


def _shape_problems(name, distances, ids, nq, k):
    problems = []
    for label, arr in (("distances", distances), ("ids", ids)):
        if getattr(arr, "shape", None) != (nq, k):
            shape = getattr(arr, "shape", None)
            problems.append(f"{name}: {label} shape {shape}, expected {(nq, k)}")
    return problems


def _id_problems(name, ids, nrows):
    bad = (ids < -1) | (ids >= nrows)
    if bad.any():
        return [f"{name}: {int(bad.sum())} ids outside [-1, {nrows})"]
    return []


def hamming_problems(name, database, queries, distances, ids, k):
    """Checks one contender's Hamming top-k: shapes, ids, ascending order, and that each
    reported distance is the true distance of the reported id."""
    nq = queries.shape[0]
    problems = _shape_problems(name, distances, ids, nq, k)
    if problems:
        return problems
    problems = _id_problems(name, ids, database.shape[0])
    if problems:
        return problems
    d = np.asarray(distances).astype(np.int64)
    valid = ids >= 0
    if (np.diff(np.where(valid, d, np.iinfo(np.int64).max), axis=1) < 0).any():
        problems.append(f"{name}: distances not ascending in some row")
    picked = database[np.where(valid, ids, 0)].reshape(nq * k, -1)
    paired = np.repeat(queries, k, axis=0)
    xor = _reference.words(picked) ^ _reference.words(paired)
    true = _reference.popcount(xor).sum(axis=1, dtype=np.int64).reshape(nq, k)
    wrong = valid & (true != d)
    if wrong.any():
        problems.append(f"{name}: {int(wrong.sum())} reported distances differ from the true ones")
    if int(valid.sum(axis=1).min(initial=k)) < min(k, database.shape[0]):
        problems.append(f"{name}: fewer than min(k, n) results in some row")
    return problems


def float_problems(name, database, queries, scores, ids, k):
    """Checks one contender's inner-product top-k: shapes, ids, descending order, and the
    scores of the returned ids recomputed in float64."""
    nq = queries.shape[0]
    problems = _shape_problems(name, scores, ids, nq, k)
    if problems:
        return problems
    problems = _id_problems(name, ids, database.shape[0])
    if problems:
        return problems
    valid = ids >= 0
    picked = database[np.where(valid, ids, 0)].astype(np.float64)
    true = np.einsum("qkd,qd->qk", picked, queries.astype(np.float64))
    tol = _score_tolerance(database, queries)
    wrong = valid & (np.abs(true - scores) > tol)
    if wrong.any():
        problems.append(
            f"{name}: {int(wrong.sum())} scores differ from the recomputed ones by > {tol:.3g}"
        )
    s = np.where(valid, scores, -np.inf)
    if (np.diff(s, axis=1) > tol).any():
        problems.append(f"{name}: scores not descending in some row")
    return problems


def _score_tolerance(database, queries):
    # float32 dot products of d terms drift from the exact value by about
    # sqrt(d) * eps * |q| * |x| (blocked or pairwise sums); allow a generous multiple,
    # still far below the gap a wrong id would leave.
    d = database.shape[1]
    qn = float(np.linalg.norm(queries, axis=1).max(initial=0.0))
    xn = float(np.linalg.norm(database[: min(database.shape[0], 10_000)], axis=1).max(initial=0.0))
    return 16.0 * math.sqrt(d) * float(np.finfo(np.float32).eps) * max(qn * xn, 1.0)


def agreement_problems(
    name, reference_name, kind, distances, reference, *, database=None, queries=None
):
    """Two contenders must return the same top-k distances (Hamming: exactly; float: to
    float32 rounding). Ids may differ only among equal distances, which the per-contender
    checks already prove consistent."""
    if distances.shape != reference.shape:
        return [
            f"{name}: shape {distances.shape} differs from {reference_name}'s {reference.shape}"
        ]
    if kind == BINARY:
        diff = distances != reference
    else:
        tol = _score_tolerance(database, queries) if database is not None else 1e-3
        diff = ~np.isclose(distances, reference, rtol=0.0, atol=tol) & ~(
            np.isinf(distances) & np.isinf(reference)
        )
    if diff.any():
        return [f"{name}: {int(diff.sum())} top-k distances differ from {reference_name}'s"]
    return []


def group_problems(kind, database, queries, k, results):
    """Checks every contender of one group (``results``: name -> its answer to
    ``queries``) on its first queries, and each against cofisearch (or the first)."""
    m = min(queries.shape[0], CHECKED_QUERIES)
    q = queries[:m]
    arrays = {name: result_arrays(r) for name, r in results.items()}
    arrays = {name: (d[:m], i[:m]) for name, (d, i) in arrays.items()}
    ref_name = "cofisearch" if "cofisearch" in arrays else next(iter(arrays), None)
    problems = []
    for name, (d, i) in arrays.items():
        if kind == BINARY:
            problems += hamming_problems(name, database, q, d, i, k)
        else:
            problems += float_problems(name, database, q, d, i, k)
        if name != ref_name:
            problems += agreement_problems(
                name, ref_name, kind, d, arrays[ref_name][0], database=database, queries=q
            )
    return problems
