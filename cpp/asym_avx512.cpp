// AVX-512 asymmetric kernel (see asym.h). A group of 8 codes of the panel is one vector
// per word, so VPOPCNTQ of (plane word & code word) counts 8 codes at once and nothing is
// reduced across lanes; the counts of plane j are shifted by j and summed, converted to
// float (exact, below 2^24) and the estimate is evaluated with separate multiplies and
// adds, never an FMA, in asym.h's association.
//
// Codes of up to 16 words (1,024 bits) are held in registers for the whole query tile,
// the word loop unrolled for each width: with the words read from memory inside the plane
// loop, 512-bit codes took about 16 cycles per estimate instead of the 4 VPOPCNTQs that
// bound it (4 planes x 8 words per 8 codes, one VPOPCNTQ per cycle), and 768-bit codes
// (the default screen of 384-d embeddings such as all-MiniLM-L6-v2) 1.7x the time they
// take in registers.
#include <immintrin.h>

#include "asym.h"

namespace cofisearch {
namespace {

struct Tile {
  const std::uint64_t* qwords;
  std::size_t qbits;
  const float* qconst;
  const float* bias;
  std::size_t nq;
  const float* thresh;
};

// The estimates of the 8 codes of a group for query q, from their integer counts.
__m256 estimate(const Tile& t, std::size_t q, __m512i ip, __m256 pcf, __m256 f) {
  const float* k = t.qconst + 3 * q;
  __m256 s = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(k[0]), _mm512_cvtepi64_ps(ip)),
                           _mm256_mul_ps(_mm256_set1_ps(k[1]), pcf));
  s = _mm256_add_ps(s, _mm256_set1_ps(k[2]));
  return _mm256_add_ps(_mm256_set1_ps(t.bias[q]), _mm256_mul_ps(f, s));
}

// Writes the hits of query q among the lanes of a group whose rows start at r0.
std::size_t emit(const Tile& t, std::size_t q, __m256 est, __mmask8 lanes, std::size_t r0,
                 ScoreHit* hits) {
  // Not (est <= thresh): also true against a NaN threshold, as the contract says.
  unsigned m = _mm256_mask_cmp_ps_mask(lanes, est, _mm256_set1_ps(t.thresh[q]), _CMP_NLE_UQ);
  if (!m) return 0;
  alignas(32) float e[kCodeGroup];
  _mm256_store_ps(e, est);
  std::size_t h = 0;
  while (m) {
    const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
    m &= m - 1;
    hits[h++] = {static_cast<std::uint32_t>(q), static_cast<std::uint32_t>(r0 + l), e[l]};
  }
  return h;
}

__m512i popcount_and(std::uint64_t plane, __m512i x) {
  return _mm512_popcnt_epi64(_mm512_and_si512(_mm512_set1_epi64(static_cast<long long>(plane)), x));
}

// Bytes of panel ahead of the group being scored that are requested early. A single
// query reads its probed lists from memory once, list by list; the hardware prefetcher
// alone left it at about 7 GB/s where a stream reads 10-11 (1M items, 64 of 1024 lists,
// 512-bit codes, Intel Xeon @ 2.8 GHz: 12-25% less time a query with 2-8 KB ahead).
constexpr std::size_t kPrefetchBytes = 4096;

// W words per code (0: any number, read from memory).
template <std::size_t W>
std::size_t scan(const Tile& t, const std::uint64_t* panel, const float* factors, std::size_t n,
                 std::size_t words, ScoreHit* hits) {
  if (W) words = W;
  std::size_t h = 0;
  const std::size_t groups = (n + kCodeGroup - 1) / kCodeGroup;
  const std::size_t group_words = words * kCodeGroup;
  const std::size_t ahead = (kPrefetchBytes + group_words * 8 - 1) / (group_words * 8);
  for (std::size_t g = 0; g < groups; ++g) {
    const std::uint64_t* grp = panel + g * group_words;
    if (g + ahead < groups) {
      const char* next = reinterpret_cast<const char*>(grp + ahead * group_words);
      for (std::size_t b = 0; b < group_words * 8; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(factors + (g + ahead) * kCodeGroup), _MM_HINT_T0);
    }
    const std::size_t r0 = g * kCodeGroup;
    const std::size_t valid = n - r0 < kCodeGroup ? n - r0 : kCodeGroup;
    const __mmask8 lanes = static_cast<__mmask8>((1u << valid) - 1);
    __m512i x[W ? W : 1];
    __m512i pc = _mm512_setzero_si512();
    for (std::size_t w = 0; w < words; ++w) {
      const __m512i v = _mm512_loadu_si512(grp + w * kCodeGroup);
      if (W) x[w] = v;
      pc = _mm512_add_epi64(pc, _mm512_popcnt_epi64(v));
    }
    const __m256 pcf = _mm512_cvtepi64_ps(pc);
    const __m256 f = _mm256_maskz_loadu_ps(lanes, factors + r0);
    for (std::size_t q = 0; q < t.nq; ++q) {
      const std::uint64_t* planes = t.qwords + q * t.qbits * words;
      __m512i ip = _mm512_setzero_si512();
      // Horner from the top plane: ip = 2 ip + count of plane j.
      for (std::size_t j = t.qbits; j-- > 0;) {
        const std::uint64_t* p = planes + j * words;
        __m512i c = _mm512_setzero_si512();
        if constexpr (W > 0) {
          for (std::size_t w = 0; w < W; ++w) c = _mm512_add_epi64(c, popcount_and(p[w], x[w]));
        } else {
          for (std::size_t w = 0; w < words; ++w)
            c = _mm512_add_epi64(c, popcount_and(p[w], _mm512_loadu_si512(grp + w * kCodeGroup)));
        }
        ip = _mm512_add_epi64(_mm512_add_epi64(ip, ip), c);
      }
      h += emit(t, q, estimate(t, q, ip, pcf, f), lanes, r0, hits + h);
    }
  }
  return h;
}

}  // namespace

std::size_t asym_b1_scan_avx512(const std::uint64_t* qwords, std::size_t qbits,
                                const float* qconst, const float* bias, std::size_t nq,
                                const std::uint64_t* panel, const float* factors, std::size_t n,
                                std::size_t words, const float* thresh, ScoreHit* hits) {
  const Tile t{qwords, qbits, qconst, bias, nq, thresh};
  switch (words) {
    case 1: return scan<1>(t, panel, factors, n, words, hits);
    case 2: return scan<2>(t, panel, factors, n, words, hits);
    case 3: return scan<3>(t, panel, factors, n, words, hits);
    case 4: return scan<4>(t, panel, factors, n, words, hits);
    case 5: return scan<5>(t, panel, factors, n, words, hits);
    case 6: return scan<6>(t, panel, factors, n, words, hits);
    case 7: return scan<7>(t, panel, factors, n, words, hits);
    case 8: return scan<8>(t, panel, factors, n, words, hits);
    case 9: return scan<9>(t, panel, factors, n, words, hits);
    case 10: return scan<10>(t, panel, factors, n, words, hits);
    case 11: return scan<11>(t, panel, factors, n, words, hits);
    case 12: return scan<12>(t, panel, factors, n, words, hits);
    case 13: return scan<13>(t, panel, factors, n, words, hits);
    case 14: return scan<14>(t, panel, factors, n, words, hits);
    case 15: return scan<15>(t, panel, factors, n, words, hits);
    case 16: return scan<16>(t, panel, factors, n, words, hits);
    default: return scan<0>(t, panel, factors, n, words, hits);
  }
}

}  // namespace cofisearch
