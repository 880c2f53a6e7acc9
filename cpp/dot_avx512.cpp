// AVX-512 inner-product kernels (F, BW, DQ, VL; the flags of every AVX-512 unit),
// compiled only in this translation unit.
//
// Arithmetic of every score: one FMA chain along the dimension, in index order, starting
// from zero, and one lane carries one (query, row) pair. The kernels differ only in how
// 16 rows' values at one dimension reach a register (transposed on the fly, or read from
// a panel packed once per block), never in the arithmetic: a batch, a lone query and the
// rerank give the same bits for the same pair, so the cascade at full depth equals
// exhaustive search. With rows in lanes a tile also ends with its scores ready to
// compare, without the horizontal reduction per score that a dimension-in-lanes layout
// pays.
//
// Five strategies, in this order: 2-8 queries transpose 16 rows at a time as they read
// them (stream); a lone query screens rows as stored and gives the chain only to rows
// near its threshold (screen); batches read a panel that the driver packs once per block
// and run a 12-query x 32-row micro-kernel on it, GEMM style (packed panel); a few dozen
// queries packed once per search meet rows as stored (query panel); the rerank gathers
// scattered rows (gather). Every tile ends with the threshold compare.
#include <immintrin.h>

#include "kernels.h"

namespace cofisearch {
namespace {

using u32 = std::uint32_t;
using sz = std::size_t;

constexpr int kShuffleEven = _MM_SHUFFLE(2, 0, 2, 0);
constexpr int kShuffleOdd = _MM_SHUFFLE(3, 1, 3, 1);

// A size known at compile time, passed as a value so that a lambda can be compiled for it.
template <int N>
struct Count {
  static constexpr int value = N;
};

constexpr sz kPanel = kPanelRows;  // rows per packed strip: two registers per dimension

// In: v[i] holds 16 consecutive dimensions of row i. Out: v[t] holds dimension t of rows
// 0..15.
inline void transpose16(__m512* v) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // v[4i + k] now holds, in 128-bit chunk c, dimension 4c + k of rows 4i..4i+3.
  for (int k = 0; k < 4; ++k) {
    const __m512 lo01 = _mm512_shuffle_f32x4(v[k], v[4 + k], 0x44);
    const __m512 hi01 = _mm512_shuffle_f32x4(v[k], v[4 + k], 0xEE);
    const __m512 lo23 = _mm512_shuffle_f32x4(v[8 + k], v[12 + k], 0x44);
    const __m512 hi23 = _mm512_shuffle_f32x4(v[8 + k], v[12 + k], 0xEE);
    t[k] = _mm512_shuffle_f32x4(lo01, lo23, kShuffleEven);
    t[4 + k] = _mm512_shuffle_f32x4(lo01, lo23, kShuffleOdd);
    t[8 + k] = _mm512_shuffle_f32x4(hi01, hi23, kShuffleEven);
    t[12 + k] = _mm512_shuffle_f32x4(hi01, hi23, kShuffleOdd);
  }
  for (int i = 0; i < 16; ++i) v[i] = t[i];
}

// Dimensions [j, j + len) of rows r[0..15], one dimension per register (len <= 16). The
// rows in `next` are requested at the same offset: scans walk 16 rows side by side, more
// streams than the hardware prefetcher follows.
inline void load_columns(const float* const* r, const float* const* next, sz j, sz len,
                         __m512* v) {
  const __mmask16 m = static_cast<__mmask16>((1u << len) - 1);
  for (int i = 0; i < 16; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(next[i] + j), _MM_HINT_T0);
    v[i] = _mm512_maskz_loadu_ps(m, r[i] + j);
  }
  transpose16(v);
}

// Scores of MR queries with the 16 rows r, read straight from memory (a lone query or a
// few: packing would cost more than it saves).
template <int MR>
inline void stream_tile(const float* const* q, const float* const* r, const float* const* next,
                        sz dim, __m512* acc) {
  for (int a = 0; a < MR; ++a) acc[a] = _mm512_setzero_ps();
  __m512 v[16];
  sz j = 0;
  for (; j + 16 <= dim; j += 16) {
    load_columns(r, next, j, 16, v);
    for (int a = 0; a < MR; ++a)
      for (int t = 0; t < 16; ++t)
        acc[a] = _mm512_fmadd_ps(_mm512_set1_ps(q[a][j + t]), v[t], acc[a]);
  }
  if (j < dim) {
    const sz len = dim - j;
    load_columns(r, next, j, len, v);
    for (int a = 0; a < MR; ++a)
      for (sz t = 0; t < len; ++t)
        acc[a] = _mm512_fmadd_ps(_mm512_set1_ps(q[a][j + t]), v[t], acc[a]);
  }
}

// Appends the pairs of `scores` (lane l: row row0 + l, lanes in `valid` only) that beat
// the query's threshold.
inline ScoreHit* emit_scores(u32 query, sz row0, const __m512* scores, int regs, float thresh,
                             u32 valid, ScoreHit* out) {
  const __m512 t = _mm512_set1_ps(thresh);
  u32 m = 0;
  for (int g = 0; g < regs; ++g)
    m |= static_cast<u32>(_mm512_cmp_ps_mask(scores[g], t, _CMP_NLE_UQ)) << (16 * g);
  m &= valid;
  if (!m) return out;
  alignas(64) float sc[32];
  for (int g = 0; g < regs; ++g) _mm512_store_ps(sc + 16 * g, scores[g]);
  while (m) {
    const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
    *out++ = {query, static_cast<u32>(row0 + l), sc[l]};
    m &= m - 1;
  }
  return out;
}

inline u32 first_lanes(sz count) { return count >= 32 ? ~0u : (1u << count) - 1; }

// Rows i..i+N-1 of a block of n, and the N after them (for prefetching), each clamped to
// the last row: a tile past the end repeats it, and its lanes are masked out.
template <sz N>
inline void tile_rows(const float* rows, sz i, sz n, sz dim, const float** r, const float** next) {
  for (sz k = 0; k < N; ++k) {
    r[k] = rows + (i + k < n ? i + k : n - 1) * dim;
    next[k] = rows + (i + N + k < n ? i + N + k : n - 1) * dim;
  }
}

template <int MR>
ScoreHit* stream_group(const float* queries, sz q0, const float* rows, sz n, sz dim,
                       const float* thresh, ScoreHit* out) {
  const float* q[MR];
  for (int a = 0; a < MR; ++a) q[a] = queries + (q0 + a) * dim;
  for (sz i = 0; i < n; i += 16) {
    const float* r[16];
    const float* next[16];
    tile_rows<16>(rows, i, n, dim, r, next);
    __m512 acc[MR];
    stream_tile<MR>(q, r, next, dim, acc);
    for (int a = 0; a < MR; ++a)
      out = emit_scores(static_cast<u32>(q0 + a), i, acc + a, 1, thresh[q0 + a],
                        first_lanes(n - i), out);
  }
  return out;
}

// Calls f(Count<rest>{}) for 0 < rest <= M, so that a remainder known
// only at run time gets the tile compiled for its size; returns `out` when rest is 0.
template <int M, class F>
ScoreHit* for_remainder(sz rest, ScoreHit* out, F&& f) {
  if constexpr (M == 0) {
    return out;
  } else {
    if (rest == M) return f(Count<M>{});
    return for_remainder<M - 1>(rest, out, f);
  }
}

// Runs group(q0, Count<size>{}, out) over queries [0, nq) in groups
// of M, the last one smaller; returns the end of the hits written.
template <int M, class Group>
ScoreHit* in_query_groups(sz nq, ScoreHit* out, Group&& group) {
  sz q = 0;
  for (; q + M <= nq; q += M) out = group(q, Count<M>{}, out);
  return for_remainder<M - 1>(nq - q, out, [&](auto mr) { return group(q, mr, out); });
}

// Eight queries per pass keep the accumulators, the 16 transposed registers and the
// transpose's temporaries within the register file.
constexpr sz kStreamQueries = 8;

inline __m512 fold_pairs_ps(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
}

inline __m512 fold_quads_ps(__m512 a, __m512 b) {
  const __m512d x = _mm512_castps_pd(a), y = _mm512_castps_pd(b);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
}

inline __m512 fold_chunks_ps(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, kShuffleEven),
                       _mm512_shuffle_f32x4(a, b, kShuffleOdd));
}

// Lane l: the sum of the lanes of a[l].
inline __m512 reduce16_ps(const __m512* a) {
  const __m512 u0 = fold_quads_ps(fold_pairs_ps(a[0], a[1]), fold_pairs_ps(a[2], a[3]));
  const __m512 u1 = fold_quads_ps(fold_pairs_ps(a[4], a[5]), fold_pairs_ps(a[6], a[7]));
  const __m512 u2 = fold_quads_ps(fold_pairs_ps(a[8], a[9]), fold_pairs_ps(a[10], a[11]));
  const __m512 u3 = fold_quads_ps(fold_pairs_ps(a[12], a[13]), fold_pairs_ps(a[14], a[15]));
  return fold_chunks_ps(fold_chunks_ps(u0, u1), fold_chunks_ps(u2, u3));
}

// A lone query is bound by memory, and transposing rows on the fly (the price of the
// chain arithmetic) costs more per byte than memory delivers (26 GB/s against 36 for
// rows read as stored). So it screens rows with dimension-in-lanes sums, which need no
// transpose, and a bound on how far such a sum can be from the chain's: both sum the same
// products, with rounding errors of at most gamma_d and gamma_(d/16+5) times
// sum |q_j r_j| <= |q| |r| (Cauchy-Schwarz), taken four times over for margin, plus a
// subnormal floor. Only rows whose screened score comes within that bound of the
// threshold get the exact chain, so the results are the chain arithmetic's, at close to
// streaming speed (the norm costs one more FMA per element: 30-32 GB/s).
struct ScreenBound {
  float relative;
  float absolute;
};

inline ScreenBound screen_bound(sz dim) {
  const float roundings = static_cast<float>(dim + dim / 16 + 5);
  return {4.0f * roundings * 0x1p-24f, 4.0f * roundings * 0x1p-149f};
}

// Rows i..i+7 of one query: lanes 0..7 the dimension-in-lanes scores, lanes 8..15 (with
// kRowNorms) the rows' squared norms. Without them the loop is one load and one FMA per
// element, like the plain scans; the norms cost a further FMA and about 15%.
template <bool kRowNorms>
inline __m512 screen_tile(const float* q, const float* const* r,
                          [[maybe_unused]] const float* const* next, sz dim) {
  __m512 acc[16];
  for (int l = 0; l < 16; ++l) acc[l] = _mm512_setzero_ps();
  sz j = 0;
  auto step = [&](__m512 qv, auto load) {
    for (int l = 0; l < 8; ++l) {
      // Measured: the prefetch pays only when the norms make the loop longer (+10%); on
      // the bare loop it costs 10%.
      if constexpr (kRowNorms) _mm_prefetch(reinterpret_cast<const char*>(next[l] + j), _MM_HINT_T0);
      const __m512 rv = load(r[l]);
      acc[l] = _mm512_fmadd_ps(qv, rv, acc[l]);
      if constexpr (kRowNorms) acc[8 + l] = _mm512_fmadd_ps(rv, rv, acc[8 + l]);
    }
  };
  for (; j + 16 <= dim; j += 16)
    step(_mm512_loadu_ps(q + j), [&j](const float* p) { return _mm512_loadu_ps(p + j); });
  if (j < dim) {
    const __mmask16 m = static_cast<__mmask16>(first_lanes(dim - j));
    step(_mm512_maskz_loadu_ps(m, q + j),
         [&j, m](const float* p) { return _mm512_maskz_loadu_ps(m, p + j); });
  }
  return reduce16_ps(acc);
}

// Exact chain scores of one query for the rows listed in `cand` (from `from` to `to`),
// keeping those that beat the threshold; compacts them in place.
ScoreHit* confirm(const float* q, const float* rows, sz dim, float thresh, ScoreHit* from,
                  ScoreHit* to) {
  ScoreHit* out = from;
  const sz m = static_cast<sz>(to - from);
  const float* qp[1] = {q};
  auto row = [&](sz j) { return rows + static_cast<sz>(from[j < m ? j : m - 1].row) * dim; };
  for (sz i = 0; i < m; i += 16) {
    const float* r[16];
    const float* next[16];
    u32 ids[16];
    for (sz j = 0; j < 16; ++j) {
      r[j] = row(i + j);
      next[j] = row(i + 16 + j);
      ids[j] = from[i + j < m ? i + j : m - 1].row;
    }
    const u32 query = from[i].query;
    __m512 acc;
    stream_tile<1>(qp, r, next, dim, &acc);
    u32 hit = _mm512_cmp_ps_mask(acc, _mm512_set1_ps(thresh), _CMP_NLE_UQ) &
              first_lanes(m - i);
    alignas(64) float sc[16];
    _mm512_store_ps(sc, acc);
    while (hit) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(hit));
      *out++ = {query, ids[l], sc[l]};
      hit &= hit - 1;
    }
  }
  return out;
}

template <bool kRowNorms>
ScoreHit* screen_query(const float* q, const float* rows, sz n, sz dim, float row_norm,
                       const float* thresh, ScoreHit* out) {
  const ScreenBound b = screen_bound(dim);
  const __m512 t = _mm512_set1_ps(thresh[0]);
  __m512 qq = _mm512_setzero_ps();
  for (sz j = 0; j < dim; j += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>(first_lanes(dim - j)), q + j);
    qq = _mm512_fmadd_ps(v, v, qq);
  }
  const float qnorm = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(_mm512_reduce_add_ps(qq))));
  const __m512 rel = _mm512_set1_ps(b.relative * qnorm), abs_floor = _mm512_set1_ps(b.absolute);
  const __m512 margin = _mm512_fmadd_ps(rel, _mm512_set1_ps(row_norm), abs_floor);
  ScoreHit* const first = out;
  for (sz i = 0; i < n; i += 8) {
    const float* r[8];
    const float* next[8];
    tile_rows<8>(rows, i, n, dim, r, next);
    const __m512 s = screen_tile<kRowNorms>(q, r, next, dim);
    __m512 reach;
    if constexpr (kRowNorms) {
      // Lanes 8..15 (the squared norms) moved under lanes 0..7.
      const __m512 norms = _mm512_sqrt_ps(_mm512_shuffle_f32x4(s, s, _MM_SHUFFLE(3, 2, 3, 2)));
      reach = _mm512_add_ps(s, _mm512_fmadd_ps(norms, rel, abs_floor));
    } else {
      reach = _mm512_add_ps(s, margin);
    }
    u32 m = _mm512_cmp_ps_mask(reach, t, _CMP_NLE_UQ) & first_lanes(n - i < 8 ? n - i : 8);
    while (m) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
      *out++ = {0, static_cast<u32>(i + l), 0.0f};
      m &= m - 1;
    }
  }
  return confirm(q, rows, dim, thresh[0], first, out);
}

}  // namespace

sz dot_f32_scan_avx512(const float* queries, sz nq, const float* rows, sz n, sz dim,
                       float row_norm, const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  if (nq == 1) {
    const bool unknown_norm = row_norm != row_norm;  // NaN
    out = unknown_norm ? screen_query<true>(queries, rows, n, dim, 0.0f, thresh, out)
                               : screen_query<false>(queries, rows, n, dim, row_norm, thresh, out);
    return static_cast<sz>(out - hits);
  }
  out = in_query_groups<kStreamQueries>(nq, out, [&](sz q, auto mr, ScoreHit* o) {
    return stream_group<decltype(mr)::value>(queries, q, rows, n, dim, thresh, o);
  });
  return static_cast<sz>(out - hits);
}

// Strip s of the panel holds rows 32s..32s+31, dimension j of row 32s + i at
// [s * 32 * dim + j * 32 + i]; the last strip repeats the last row.
void dot_f32_pack_avx512(const float* rows, sz n, sz dim, float* panel) {
  for (sz s = 0; s * kPanel < n; ++s) {
    const float* r[kPanel];
    const float* next[kPanel];
    tile_rows<kPanel>(rows, s * kPanel, n, dim, r, next);
    float* strip = panel + s * kPanel * dim;
    __m512 v[16];
    for (sz h = 0; h < 2; ++h)
      for (sz j = 0; j < dim; j += 16) {
        const sz len = dim - j < 16 ? dim - j : 16;
        load_columns(r + 16 * h, next + 16 * h, j, len, v);
        for (sz t = 0; t < len; ++t) _mm512_storeu_ps(strip + (j + t) * kPanel + 16 * h, v[t]);
      }
  }
}

namespace {

// Scores of MR queries with one 32-row strip: per dimension two loads of the strip, MR
// broadcasts and 2 * MR FMAs, like a GEMM micro-kernel.
template <int MR>
inline void panel_tile(const float* const* q, const float* strip, sz dim, __m512* acc) {
  for (int a = 0; a < 2 * MR; ++a) acc[a] = _mm512_setzero_ps();
  for (sz j = 0; j < dim; ++j) {
    const __m512 p0 = _mm512_loadu_ps(strip + j * kPanel);
    const __m512 p1 = _mm512_loadu_ps(strip + j * kPanel + 16);
    for (int a = 0; a < MR; ++a) {
      const __m512 b = _mm512_set1_ps(q[a][j]);
      acc[2 * a] = _mm512_fmadd_ps(b, p0, acc[2 * a]);
      acc[2 * a + 1] = _mm512_fmadd_ps(b, p1, acc[2 * a + 1]);
    }
  }
}

// A lone query's scores with kLoneStrips strips at once: 2 * kLoneStrips independent
// chains, where one strip's two waited on the FMA latency, and as many streams of the
// panel in flight. Each lane's chain is the same as panel_tile's.
constexpr sz kLoneStrips = 4;
constexpr sz kLonePrefetch = 1024;  // floats ahead in each strip

inline void lone_tile(const float* q, const float* strips, sz dim, __m512* acc) {
  for (sz a = 0; a < 2 * kLoneStrips; ++a) acc[a] = _mm512_setzero_ps();
  const sz step = kPanel * dim;
  for (sz j = 0; j < dim; ++j) {
    const __m512 b = _mm512_set1_ps(q[j]);
    for (sz t = 0; t < kLoneStrips; ++t) {
      const float* p = strips + t * step + j * kPanel;
      if (j % 2 == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(p + kLonePrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(p + kLonePrefetch + 16), _MM_HINT_T0);
      }
      acc[2 * t] = _mm512_fmadd_ps(b, _mm512_loadu_ps(p), acc[2 * t]);
      acc[2 * t + 1] = _mm512_fmadd_ps(b, _mm512_loadu_ps(p + 16), acc[2 * t + 1]);
    }
  }
}

template <int MR>
ScoreHit* panel_group(const float* queries, sz q0, const float* panel, sz n, sz dim,
                      const float* thresh, ScoreHit* out) {
  const float* q[MR];
  for (int a = 0; a < MR; ++a) q[a] = queries + (q0 + a) * dim;
  sz i = 0;
  if constexpr (MR == 1) {
    // One query over 576 rows of 384 dimensions (an asymmetric screen's rotation), one
    // strip at a time: 21 us in L2, 84 us from memory; four strips with a prefetch 4 KB
    // ahead in each: 15-18 and 56-72 us (session 9, noisy machine).
    for (; i + kLoneStrips * kPanel <= (n + kPanel - 1) / kPanel * kPanel; i += kLoneStrips * kPanel) {
      __m512 acc[2 * kLoneStrips];
      lone_tile(q[0], panel + i * dim, dim, acc);
      for (sz t = 0; t < kLoneStrips && i + t * kPanel < n; ++t)
        out = emit_scores(static_cast<u32>(q0), i + t * kPanel, acc + 2 * t, 2, thresh[q0],
                          first_lanes(n - i - t * kPanel), out);
    }
  }
  for (; i < n; i += kPanel) {
    __m512 acc[2 * MR];
    panel_tile<MR>(q, panel + i * dim, dim, acc);
    for (int a = 0; a < MR; ++a)
      out = emit_scores(static_cast<u32>(q0 + a), i, acc + 2 * a, 2, thresh[q0 + a],
                        first_lanes(n - i), out);
  }
  return out;
}

// Twelve queries: 24 accumulators, two strip registers and a broadcast fill 27 of the 32
// registers, and each strip load feeds 12 FMAs.
constexpr sz kPanelQueries = 12;

}  // namespace

sz dot_f32_scan_packed_avx512(const float* queries, sz nq, const float* panel, sz n, sz dim,
                              const float* thresh, ScoreHit* hits) {
  ScoreHit* out = in_query_groups<kPanelQueries>(nq, hits, [&](sz q, auto mr, ScoreHit* o) {
    return panel_group<decltype(mr)::value>(queries, q, panel, n, dim, thresh, o);
  });
  return static_cast<sz>(out - hits);
}

// ---- queries in lanes ----
//
// A batch of a few dozen queries spends most of its time packing rows (each packed row
// serves only those queries). With the queries packed instead (32 per group, once per
// search), rows are read as stored and each row value is broadcast against two registers
// of queries: per dimension two loads, 12 broadcasts and 24 FMAs, no transpose.

namespace {

// Scores of one 32-query group with the 12 rows r: acc[2i], acc[2i+1] hold row i against
// queries 0-15 and 16-31.
inline void qlane_tile(const float* qp, const float* const* r, const float* const* next, sz dim,
                       __m512* acc) {
  for (int a = 0; a < 24; ++a) acc[a] = _mm512_setzero_ps();
  for (sz j = 0; j < dim; ++j) {
    // Twelve rows side by side are more streams than the hardware prefetcher follows.
    if (j % 16 == 0)
      for (int i = 0; i < 12; ++i) _mm_prefetch(reinterpret_cast<const char*>(next[i] + j), _MM_HINT_T0);
    const __m512 q0 = _mm512_loadu_ps(qp + j * kPanel);
    const __m512 q1 = _mm512_loadu_ps(qp + j * kPanel + 16);
    for (int i = 0; i < 12; ++i) {
      const __m512 b = _mm512_set1_ps(r[i][j]);
      acc[2 * i] = _mm512_fmadd_ps(b, q0, acc[2 * i]);
      acc[2 * i + 1] = _mm512_fmadd_ps(b, q1, acc[2 * i + 1]);
    }
  }
}

ScoreHit* qlane_group(const float* qp, sz q0, sz nq, const float* rows, sz n, sz dim,
                      const float* thresh, ScoreHit* out) {
  __m512 tv[2];
  __mmask16 valid[2];
  for (sz h = 0; h < 2; ++h) {
    const sz first = q0 + 16 * h;
    valid[h] = static_cast<__mmask16>(first < nq ? first_lanes(nq - first < 16 ? nq - first : 16) : 0);
    tv[h] = _mm512_maskz_loadu_ps(valid[h], thresh + (first < nq ? first : 0));
  }
  for (sz i = 0; i < n; i += 12) {
    const float* r[12];
    const float* next[12];
    tile_rows<12>(rows, i, n, dim, r, next);
    __m512 acc[24];
    qlane_tile(qp, r, next, dim, acc);
    const sz rows_here = n - i < 12 ? n - i : 12;
    // Constant indices only: an accumulator indexed at run time would keep them all in
    // memory, stored on every step of the tile.
    for (int k = 0; k < 12; ++k) {
      if (static_cast<sz>(k) >= rows_here) break;
      for (int h = 0; h < 2; ++h) {
        u32 m = _mm512_cmp_ps_mask(acc[2 * k + h], tv[h], _CMP_NLE_UQ) & valid[h];
        if (!m) continue;
        alignas(64) float sc[16];
        _mm512_store_ps(sc, acc[2 * k + h]);
        while (m) {
          const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
          *out++ = {static_cast<u32>(q0 + 16 * static_cast<sz>(h) + l),
                    static_cast<u32>(i + static_cast<sz>(k)), sc[l]};
          m &= m - 1;
        }
      }
    }
  }
  return out;
}

}  // namespace

sz dot_f32_scan_qpanel_avx512(const float* qpanel, sz nq, const float* rows, sz n, sz dim,
                              const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  for (sz q0 = 0; q0 < nq; q0 += kPanel)
    out = qlane_group(qpanel + q0 * dim, q0, nq, rows, n, dim, thresh, out);
  return static_cast<sz>(out - hits);
}

void dot_f32_gather_avx512(const float* query, const float* base, sz dim,
                           const std::int64_t* ids, sz m, float* scores) {
  const float* q[1] = {query};
  auto row = [&](sz j) { return base + static_cast<sz>(ids[j < m ? j : m - 1]) * dim; };
  for (sz i = 0; i < m; i += 16) {
    // Candidates are scattered: the next tile's rows are requested while this one runs.
    const float* r[16];
    const float* next[16];
    for (sz j = 0; j < 16; ++j) {
      r[j] = row(i + j);
      next[j] = row(i + 16 + j);
    }
    __m512 s;
    stream_tile<1>(q, r, next, dim, &s);
    const sz rem = m - i < 16 ? m - i : 16;
    _mm512_mask_storeu_ps(scores + i, static_cast<__mmask16>(first_lanes(rem)), s);
  }
}

}  // namespace cofisearch
