// Portable Hamming kernel: the reference every SIMD level is tested against, and the
// fallback on processors (or architectures) without AVX2. Compiled with the baseline
// flags only, so __builtin_popcountll may become a library call; that is the price of
// running anywhere.
#include <cstring>

#include "kernels.h"

namespace cofisearch {
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

}  // namespace

std::size_t hamming_b8_scan_scalar(const std::uint8_t* queries, std::size_t nq,
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

}  // namespace cofisearch
