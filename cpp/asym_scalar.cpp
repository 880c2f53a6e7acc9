// Reference asymmetric kernel (see asym.h), compiled with the baseline flags and
// -ffp-contract=off: the others are tested against it.
#include "asym.h"

namespace cofisearch {

std::size_t asym_b1_scan_scalar(const std::uint64_t* qwords, std::size_t qbits,
                                const float* qconst, const float* bias, std::size_t nq,
                                const std::uint64_t* panel, const float* factors, std::size_t n,
                                std::size_t words, const float* thresh, ScoreHit* hits) {
  std::size_t h = 0;
  for (std::size_t r = 0; r < n; ++r) {
    const std::uint64_t* x = panel + (r / kCodeGroup) * words * kCodeGroup + r % kCodeGroup;
    unsigned pc = 0;
    for (std::size_t w = 0; w < words; ++w) pc += static_cast<unsigned>(__builtin_popcountll(x[w * kCodeGroup]));
    for (std::size_t q = 0; q < nq; ++q) {
      unsigned ip = 0;
      for (std::size_t j = 0; j < qbits; ++j) {
        const std::uint64_t* plane = qwords + (q * qbits + j) * words;
        unsigned c = 0;
        for (std::size_t w = 0; w < words; ++w)
          c += static_cast<unsigned>(__builtin_popcountll(plane[w] & x[w * kCodeGroup]));
        ip += c << j;
      }
      const float* k = qconst + 3 * q;
      const float est = bias[q] + factors[r] * (((k[0] * static_cast<float>(ip)) +
                                                 (k[1] * static_cast<float>(pc))) + k[2]);
      if (!(est <= thresh[q]))
        hits[h++] = {static_cast<std::uint32_t>(q), static_cast<std::uint32_t>(r), est};
    }
  }
  return h;
}

}  // namespace cofisearch
