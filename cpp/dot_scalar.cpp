// Portable inner-product kernels: the reference every SIMD level is tested against, and
// the fallback on processors (or architectures) without AVX2. Compiled with the baseline
// flags only, and with contraction into FMA turned off (CMakeLists.txt), so the
// arithmetic does not depend on the target or the language mode.
//
// Arithmetic of every score: four partial sums, dimension j into sum j % 4 (a multiply
// then an add), the last dim % 4 dimensions into sum 0, then (s0 + s1) + (s2 + s3). The
// four scoring kernels call the one function below, with the strides of their layouts, so every
// path gives the same bits by construction.
#include "kernels.h"

namespace cofisearch {
namespace {

using sz = std::size_t;

// Inner product of a and b, element j at a[j * AS] and b[j * BS]; the strides are
// compile-time constants so that the contiguous case keeps its unit-stride loop.
template <sz AS, sz BS>
inline float dot(const float* a, const float* b, sz dim) {
  // Four partial sums: independent chains the compiler can overlap without -ffast-math.
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  sz i = 0;
  for (; i + 4 <= dim; i += 4) {
    s0 += a[i * AS] * b[i * BS];
    s1 += a[(i + 1) * AS] * b[(i + 1) * BS];
    s2 += a[(i + 2) * AS] * b[(i + 2) * BS];
    s3 += a[(i + 3) * AS] * b[(i + 3) * BS];
  }
  for (; i < dim; ++i) s0 += a[i * AS] * b[i * BS];
  return (s0 + s1) + (s2 + s3);
}

inline void keep_if_above(sz q, sz i, float s, float thresh, ScoreHit* hits, sz& h) {
  if (!(s <= thresh)) hits[h++] = {static_cast<std::uint32_t>(q), static_cast<std::uint32_t>(i), s};
}

}  // namespace

sz dot_f32_scan_scalar(const float* queries, sz nq, const float* rows, sz n, sz dim, float,
                       const float* thresh, ScoreHit* hits) {
  sz h = 0;
  for (sz q = 0; q < nq; ++q)
    for (sz i = 0; i < n; ++i)
      keep_if_above(q, i, dot<1, 1>(queries + q * dim, rows + i * dim, dim), thresh[q], hits, h);
  return h;
}

void dot_f32_gather_scalar(const float* query, const float* base, sz dim,
                           const std::int64_t* ids, sz m, float* scores) {
  for (sz j = 0; j < m; ++j)
    scores[j] = dot<1, 1>(query, base + static_cast<sz>(ids[j]) * dim, dim);
}

void dot_f32_pack_scalar(const float* rows, sz n, sz dim, float* panel) {
  for (sz s = 0; s * kPanelRows < n; ++s) {
    float* strip = panel + s * kPanelRows * dim;
    for (sz i = 0; i < kPanelRows; ++i) {
      const sz r = s * kPanelRows + i < n ? s * kPanelRows + i : n - 1;
      for (sz j = 0; j < dim; ++j) strip[j * kPanelRows + i] = rows[r * dim + j];
    }
  }
}

sz dot_f32_scan_packed_scalar(const float* queries, sz nq, const float* panel, sz n, sz dim,
                              const float* thresh, ScoreHit* hits) {
  sz h = 0;
  for (sz q = 0; q < nq; ++q)
    for (sz i = 0; i < n; ++i) {
      const float* row = panel + i / kPanelRows * kPanelRows * dim + i % kPanelRows;
      keep_if_above(q, i, dot<1, kPanelRows>(queries + q * dim, row, dim), thresh[q], hits, h);
    }
  return h;
}

sz dot_f32_scan_qpanel_scalar(const float* qpanel, sz nq, const float* rows, sz n, sz dim,
                              const float* thresh, ScoreHit* hits) {
  sz h = 0;
  for (sz q = 0; q < nq; ++q) {
    const float* query = qpanel + q / kPanelRows * kPanelRows * dim + q % kPanelRows;
    for (sz i = 0; i < n; ++i)
      keep_if_above(q, i, dot<kPanelRows, 1>(query, rows + i * dim, dim), thresh[q], hits, h);
  }
  return h;
}

}  // namespace cofisearch
