// AVX2 + FMA inner-product kernels, compiled only in this translation unit.
//
// Arithmetic of every score: eight FMA chains, dimension j into chain j % 8 (the lanes of
// one register when rows are read as stored), the dimensions past the last multiple of 8
// adding zero to the chains they do not reach, then the tree
// ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)).
//
// Rows read as stored: a register-tiled scheme with 8-float registers, MR x NR
// accumulators, then a horizontal-add tree into one register of 8 scores. The panels put
// 8 rows (or 8 queries) in the lanes instead, and keep the eight chains of those 8 pairs
// in 8 registers, so the tree becomes vertical adds: the same operations on the same
// values in the same order.
#include <immintrin.h>

#include "kernels.h"

namespace cofisearch {
namespace {

using u32 = std::uint32_t;
using sz = std::size_t;

// Sums of 8 accumulators, accumulator l in lane l.
inline __m256 reduce8_ps(const __m256* a) {
  const __m256 ab = _mm256_hadd_ps(a[0], a[1]), cd = _mm256_hadd_ps(a[2], a[3]);
  const __m256 ef = _mm256_hadd_ps(a[4], a[5]), gh = _mm256_hadd_ps(a[6], a[7]);
  const __m256 lo = _mm256_hadd_ps(ab, cd), hi = _mm256_hadd_ps(ef, gh);
  return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

inline __m256i tail_mask(sz left) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), idx);
}

template <int MR, int NR>
inline __m256 dot_tile(const float* const* q, const float* const* r, sz dim) {
  static_assert(MR * NR == 8, "tile must fill 8 lanes");
  __m256 acc[8];
  for (int l = 0; l < 8; ++l) acc[l] = _mm256_setzero_ps();
  sz i = 0;
  for (; i + 8 <= dim; i += 8) {
    __m256 rv[NR];
    for (int j = 0; j < NR; ++j) rv[j] = _mm256_loadu_ps(r[j] + i);
    for (int a = 0; a < MR; ++a) {
      const __m256 qv = _mm256_loadu_ps(q[a] + i);
      for (int j = 0; j < NR; ++j) acc[a * NR + j] = _mm256_fmadd_ps(qv, rv[j], acc[a * NR + j]);
    }
  }
  if (i < dim) {
    const __m256i m = tail_mask(dim - i);
    __m256 rv[NR];
    for (int j = 0; j < NR; ++j) rv[j] = _mm256_maskload_ps(r[j] + i, m);
    for (int a = 0; a < MR; ++a) {
      const __m256 qv = _mm256_maskload_ps(q[a] + i, m);
      for (int j = 0; j < NR; ++j) acc[a * NR + j] = _mm256_fmadd_ps(qv, rv[j], acc[a * NR + j]);
    }
  }
  return reduce8_ps(acc);
}

template <int MR, int NR>
ScoreHit* scan_group(const float* queries, sz q0, const float* rows, sz n, sz dim,
                     const float* thresh, ScoreHit* out) {
  const float* q[MR];
  alignas(32) float tt[8];
  for (int a = 0; a < MR; ++a) {
    q[a] = queries + (q0 + a) * dim;
    for (int j = 0; j < NR; ++j) tt[a * NR + j] = thresh[q0 + a];
  }
  const __m256 tv = _mm256_load_ps(tt);
  for (sz i = 0; i < n; i += NR) {
    const sz rem = n - i < NR ? n - i : NR;
    const float* r[NR];
    for (int j = 0; j < NR; ++j) r[j] = rows + (i + (static_cast<sz>(j) < rem ? j : rem - 1)) * dim;
    const __m256 s = dot_tile<MR, NR>(q, r, dim);
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s, tv, _CMP_NLE_UQ)));
    if (rem < NR) {
      unsigned keep = 0;
      for (int a = 0; a < MR; ++a) keep |= ((1u << rem) - 1) << (a * NR);
      m &= keep;
    }
    if (m) {
      alignas(32) float sc[8];
      _mm256_store_ps(sc, s);
      while (m) {
        unsigned l = static_cast<unsigned>(__builtin_ctz(m));
        *out++ = {static_cast<u32>(q0 + l / NR), static_cast<u32>(i + l % NR), sc[l]};
        m &= m - 1;
      }
    }
  }
  return out;
}

}  // namespace

sz dot_f32_scan_avx2(const float* queries, sz nq, const float* rows, sz n, sz dim, float,
                     const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  sz q = 0;
  for (; q + 2 <= nq; q += 2) out = scan_group<2, 4>(queries, q, rows, n, dim, thresh, out);
  for (; q < nq; ++q) out = scan_group<1, 8>(queries, q, rows, n, dim, thresh, out);
  return static_cast<sz>(out - hits);
}

void dot_f32_gather_avx2(const float* query, const float* base, sz dim, const std::int64_t* ids,
                         sz m, float* scores) {
  const float* q[1] = {query};
  for (sz i = 0; i < m; i += 8) {
    const sz rem = m - i < 8 ? m - i : 8;
    const float* r[8];
    for (sz j = 0; j < 8; ++j)
      r[j] = base + static_cast<sz>(ids[i + (j < rem ? j : rem - 1)]) * dim;
    alignas(32) float s[8];
    _mm256_store_ps(s, dot_tile<1, 8>(q, r, dim));
    for (sz j = 0; j < rem; ++j) scores[i + j] = s[j];
  }
}

// ---- panels ----------------------------------------------------------------------------

namespace {

// Lane l: the score of pair l, whose lane operand has dimension j at lanes[j * 32 + l] (8
// consecutive columns of a panel) and whose other operand is x, shared by all 8 pairs.
inline __m256 lanes_dot(const float* lanes, const float* x, sz dim) {
  __m256 c[8];
  for (int t = 0; t < 8; ++t) c[t] = _mm256_setzero_ps();
  sz j = 0;
  for (; j + 8 <= dim; j += 8)
    for (sz t = 0; t < 8; ++t)
      c[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + j + t),
                             _mm256_loadu_ps(lanes + (j + t) * kPanelRows), c[t]);
  if (j < dim) {
    // As in the masked tail of the stream: the chains past the last dimension add
    // 0 * 0, which turns a -0 into +0.
    for (sz t = 0; t < 8; ++t)
      c[t] = j + t < dim ? _mm256_fmadd_ps(_mm256_broadcast_ss(x + j + t),
                                           _mm256_loadu_ps(lanes + (j + t) * kPanelRows), c[t])
                         : _mm256_add_ps(c[t], _mm256_setzero_ps());
  }
  return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c[0], c[1]), _mm256_add_ps(c[2], c[3])),
                       _mm256_add_ps(_mm256_add_ps(c[4], c[5]), _mm256_add_ps(c[6], c[7])));
}

inline unsigned first_lanes(sz count) { return count >= 8 ? 0xFFu : (1u << count) - 1; }

// Appends the lanes of s in `valid` that beat their threshold; lane l is the pair
// (q0 + l * dq, i0 + l * di).
inline ScoreHit* emit_lanes(__m256 s, __m256 thresh, unsigned valid, sz q0, sz dq, sz i0,
                            sz di, ScoreHit* out) {
  unsigned m =
      static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s, thresh, _CMP_NLE_UQ))) & valid;
  if (!m) return out;
  alignas(32) float sc[8];
  _mm256_store_ps(sc, s);
  while (m) {
    const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
    *out++ = {static_cast<u32>(q0 + l * dq), static_cast<u32>(i0 + l * di), sc[l]};
    m &= m - 1;
  }
  return out;
}

}  // namespace

// Packing only moves data: dot_f32_pack_scalar serves this level too (simd.cpp).

sz dot_f32_scan_packed_avx2(const float* queries, sz nq, const float* panel, sz n, sz dim,
                            const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  for (sz q = 0; q < nq; ++q) {
    const __m256 t = _mm256_set1_ps(thresh[q]);
    for (sz i = 0; i < n; i += 8) {
      const float* lanes = panel + i / kPanelRows * kPanelRows * dim + i % kPanelRows;
      out = emit_lanes(lanes_dot(lanes, queries + q * dim, dim), t, first_lanes(n - i), q, 0, i,
                       1, out);
    }
  }
  return static_cast<sz>(out - hits);
}

sz dot_f32_scan_qpanel_avx2(const float* qpanel, sz nq, const float* rows, sz n, sz dim,
                            const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  for (sz q = 0; q < nq; q += 8) {
    const float* lanes = qpanel + q / kPanelRows * kPanelRows * dim + q % kPanelRows;
    const sz here = nq - q < 8 ? nq - q : 8;
    const __m256 t = _mm256_maskload_ps(thresh + q, tail_mask(here));
    for (sz i = 0; i < n; ++i)
      out = emit_lanes(lanes_dot(lanes, rows + i * dim, dim), t, first_lanes(here), q, 1, i, 0,
                       out);
  }
  return static_cast<sz>(out - hits);
}

}  // namespace cofisearch
