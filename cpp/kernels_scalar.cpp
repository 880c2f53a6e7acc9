// Portable kernels: the reference every SIMD level is tested against, and the fallback on
// processors (or architectures) without AVX2. Compiled with the baseline flags only, so
// __builtin_popcountll may become a library call; that is the price of running anywhere.
#include <cstring>

#include "kernels.h"

namespace cofisearch {
namespace scalar {
namespace {

inline std::uint32_t hamming(const std::uint8_t* a, const std::uint8_t* b,
                             std::size_t nbytes) {
  std::uint32_t d = 0;
  std::size_t i = 0;
  for (; i + 8 <= nbytes; i += 8) {
    std::uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    d += static_cast<std::uint32_t>(__builtin_popcountll(x ^ y));
  }
  for (; i < nbytes; ++i) d += static_cast<std::uint32_t>(__builtin_popcount(a[i] ^ b[i]));
  return d;
}

std::size_t hamming_scan(const std::uint8_t* queries, std::size_t nq,
                         const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                         const std::uint32_t* thresh, HammingHit* hits) {
  std::size_t h = 0;
  for (std::size_t q = 0; q < nq; ++q) {
    const std::uint8_t* qp = queries + q * nbytes;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t d = hamming(qp, codes + i * nbytes, nbytes);
      if (d < thresh[q]) hits[h++] = {static_cast<std::uint32_t>(q),
                                      static_cast<std::uint32_t>(i), d};
    }
  }
  return h;
}

inline float dot(const float* a, const float* b, std::size_t dim) {
  // Four partial sums: independent chains the compiler can overlap without -ffast-math.
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  std::size_t i = 0;
  for (; i + 4 <= dim; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < dim; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

std::size_t dot_scan(const float* queries, std::size_t nq, const float* rows, std::size_t n,
                     std::size_t dim, float, const float* thresh, ScoreHit* hits) {
  std::size_t h = 0;
  for (std::size_t q = 0; q < nq; ++q) {
    const float* qp = queries + q * dim;
    const float t = thresh[q];
    for (std::size_t i = 0; i < n; ++i) {
      float s = dot(qp, rows + i * dim, dim);
      if (!(s <= t)) hits[h++] = {static_cast<std::uint32_t>(q),
                                  static_cast<std::uint32_t>(i), s};
    }
  }
  return h;
}

void dot_gather(const float* query, const float* base, std::size_t dim,
                const std::int64_t* ids, std::size_t m, float* scores) {
  for (std::size_t j = 0; j < m; ++j)
    scores[j] = dot(query, base + static_cast<std::size_t>(ids[j]) * dim, dim);
}

}  // namespace

const KernelSet kernels = {hamming_scan, dot_scan, dot_gather, nullptr, nullptr, nullptr};

}  // namespace scalar
}  // namespace cofisearch
