// AVX-512 asymmetric kernel (see asym.h). A group of 8 codes of the panel is one vector
// per word, so VPOPCNTQ of (plane word & code word) counts 8 codes at once and nothing is
// reduced across lanes; the counts of plane j are shifted by j and summed, converted to
// float (exact, below 2^24) and the estimate is evaluated with separate multiplies and
// adds, never an FMA, in asym.h's association.
#include <immintrin.h>

#include "asym.h"

namespace cofisearch {
namespace {

__m512i popcount_and(__m512i a, __m512i b) { return _mm512_popcnt_epi64(_mm512_and_si512(a, b)); }

}  // namespace

std::size_t asym_b1_scan_avx512(const std::uint64_t* qwords, std::size_t qbits,
                                const float* qconst, const float* bias, std::size_t nq,
                                const std::uint64_t* panel, const float* factors, std::size_t n,
                                std::size_t words, const float* thresh, ScoreHit* hits) {
  std::size_t h = 0;
  for (std::size_t g = 0; g * kCodeGroup < n; ++g) {
    const std::uint64_t* grp = panel + g * words * kCodeGroup;
    const std::size_t r0 = g * kCodeGroup;
    const std::size_t valid = n - r0 < kCodeGroup ? n - r0 : kCodeGroup;
    const __mmask8 lanes = static_cast<__mmask8>((1u << valid) - 1);
    __m512i pc = _mm512_setzero_si512();
    for (std::size_t w = 0; w < words; ++w)
      pc = _mm512_add_epi64(pc, _mm512_popcnt_epi64(_mm512_loadu_si512(grp + w * kCodeGroup)));
    const __m256 pcf = _mm512_cvtepi64_ps(pc);
    const __m256 f = _mm256_maskz_loadu_ps(lanes, factors + r0);
    for (std::size_t q = 0; q < nq; ++q) {
      const std::uint64_t* planes = qwords + q * qbits * words;
      __m512i ip = _mm512_setzero_si512();
      for (std::size_t j = 0; j < qbits; ++j) {
        __m512i c = _mm512_setzero_si512();
        for (std::size_t w = 0; w < words; ++w)
          c = _mm512_add_epi64(c, popcount_and(_mm512_set1_epi64(static_cast<long long>(planes[j * words + w])),
                                               _mm512_loadu_si512(grp + w * kCodeGroup)));
        ip = _mm512_add_epi64(ip, _mm512_slli_epi64(c, static_cast<unsigned>(j)));
      }
      const float* k = qconst + 3 * q;
      __m256 s = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(k[0]), _mm512_cvtepi64_ps(ip)),
                               _mm256_mul_ps(_mm256_set1_ps(k[1]), pcf));
      s = _mm256_add_ps(s, _mm256_set1_ps(k[2]));
      const __m256 est = _mm256_add_ps(_mm256_set1_ps(bias[q]), _mm256_mul_ps(f, s));
      // Not (est <= thresh): also true against a NaN threshold, as the contract says.
      unsigned m = _mm256_mask_cmp_ps_mask(lanes, est, _mm256_set1_ps(thresh[q]), _CMP_NLE_UQ);
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
