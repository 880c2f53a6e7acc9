// AVX2 asymmetric kernel (see asym.h). AVX2 has no vector popcount, and on codes of a few
// words the scalar POPCNT beat a nibble lookup in the Hamming kernels (simd.cpp), so the
// counts of a group of 8 codes are taken with POPCNT and the estimate of the 8 is then
// one vector of separate multiplies and adds (never an FMA), in asym.h's association.
#include <immintrin.h>

#include "asym.h"

namespace cofisearch {

std::size_t asym_b1_scan_avx2(const std::uint64_t* qwords, std::size_t qbits,
                              const float* qconst, const float* bias, std::size_t nq,
                              const std::uint64_t* panel, const float* factors, std::size_t n,
                              std::size_t words, const float* thresh, ScoreHit* hits) {
  std::size_t h = 0;
  for (std::size_t g = 0; g * kCodeGroup < n; ++g) {
    const std::uint64_t* grp = panel + g * words * kCodeGroup;
    const std::size_t r0 = g * kCodeGroup;
    const std::size_t valid = n - r0 < kCodeGroup ? n - r0 : kCodeGroup;
    alignas(32) int pc[kCodeGroup] = {};
    alignas(32) float f[kCodeGroup] = {};
    for (std::size_t l = 0; l < valid; ++l) f[l] = factors[r0 + l];
    for (std::size_t w = 0; w < words; ++w)
      for (std::size_t l = 0; l < kCodeGroup; ++l)
        pc[l] += __builtin_popcountll(grp[w * kCodeGroup + l]);
    const __m256 pcf = _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(pc)));
    const __m256 fv = _mm256_load_ps(f);
    const unsigned lanes = (1u << valid) - 1;
    for (std::size_t q = 0; q < nq; ++q) {
      const std::uint64_t* planes = qwords + q * qbits * words;
      alignas(32) int ip[kCodeGroup] = {};
      for (std::size_t j = 0; j < qbits; ++j)
        for (std::size_t l = 0; l < kCodeGroup; ++l) {
          int c = 0;
          for (std::size_t w = 0; w < words; ++w)
            c += __builtin_popcountll(planes[j * words + w] & grp[w * kCodeGroup + l]);
          ip[l] += c << j;
        }
      const float* k = qconst + 3 * q;
      const __m256 ipf = _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(ip)));
      __m256 s = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(k[0]), ipf),
                               _mm256_mul_ps(_mm256_set1_ps(k[1]), pcf));
      s = _mm256_add_ps(s, _mm256_set1_ps(k[2]));
      const __m256 est = _mm256_add_ps(_mm256_set1_ps(bias[q]), _mm256_mul_ps(fv, s));
      // Not (est <= thresh): also true against a NaN threshold, as the contract says.
      unsigned m = static_cast<unsigned>(
                       _mm256_movemask_ps(_mm256_cmp_ps(est, _mm256_set1_ps(thresh[q]), _CMP_NLE_UQ))) &
                   lanes;
      if (!m) continue;
      alignas(32) float e[kCodeGroup];
      _mm256_store_ps(e, est);
      while (m) {
        const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
        m &= m - 1;
        hits[h++] = {static_cast<std::uint32_t>(q), static_cast<std::uint32_t>(r0 + l), e[l]};
      }
    }
  }
  return h;
}

}  // namespace cofisearch
