// Asymmetric screening kernels (layer 1 of STYLE.md): a float query, quantised to a few
// bits per dimension, against 1-bit codes, scoring an estimated inner product.
//
// The estimator (RaBitQ, Gao & Long, SIGMOD 2024, in its inner-product form): an item o
// in the list of centroid c is stored as the signs x of its rotated residual r = P(o - c)
// (bit i set where r_i > 0) and one factor f = |r|^2 / sum_i |r_i|. For a query whose
// rotated vector w = Pq is quantised as w_i ~ lo + delta * u_i (u_i in [0, 2^qbits)),
//     <o, q> ~ <c, q> + f * (2 delta <x, u> + 2 lo popcount(x) - sum_i w_i),
// and <x, u> = sum_j 2^j popcount(x & plane_j), plane j holding bit j of every u_i: the
// whole estimate is integer popcounts plus six float operations, so every level computes
// it bit for bit alike (no FMA: the asym units are compiled with -ffp-contract=off).
//
// Contract of AsymScanFn, for a tile of nq <= kMaxQueryTile queries against n codes:
// - codes come as a Hamming code panel (kernels.h, HammingPackFn: groups of kCodeGroup
//   codes, word j of code 8g + l at panel[(g * words + j) * 8 + l], zero past the code);
// - query q's plane j is qwords[(q * qbits + j) * words .. + words), packed like the codes
//   (bit i of the plane is dimension i of the code), 1 <= qbits <= 8;
// - qconst[3q .. 3q + 2] are query q's (scale, lo2, shift) = (2 delta, 2 lo, -sum w), and
//   bias[q] its <c, q>; factors[r] is row r's f;
// - the estimate of (q, r), with ip = <x, u> and pc = popcount(x) as floats (exact: both
//   are below 2^24 for codes of up to 8,192 bits), is evaluated as
//       bias[q] + factors[r] * (((scale * ip) + (lo2 * pc)) + shift)
//   in float32, one rounding per operation, in that association;
// - every pair whose estimate is > thresh[q], or unordered with it (a NaN threshold
//   admits everything), goes to `hits` (room for nq * n), as DotScanFn's do.
//
// Like kernels.h, this header is included by units compiled with ISA flags: it declares
// types and functions and includes only kernels.h.
#pragma once

#include "kernels.h"

namespace cofisearch {

// Query bits the kernels accept, and the widest code whose estimate they keep exact.
constexpr std::size_t kMaxQueryBits = 8;
constexpr std::size_t kMaxAsymBits = 8192;

using AsymScanFn = std::size_t(const std::uint64_t* qwords, std::size_t qbits,
                               const float* qconst, const float* bias, std::size_t nq,
                               const std::uint64_t* panel, const float* factors, std::size_t n,
                               std::size_t words, const float* thresh, ScoreHit* hits);

AsymScanFn asym_b1_scan_scalar;
#if defined(COFISEARCH_X86)
AsymScanFn asym_b1_scan_avx2;
AsymScanFn asym_b1_scan_avx512;
#endif

// One level's asymmetric kernels (simd.cpp assembles them beside KernelSet).
struct AsymKernelSet {
  AsymScanFn* scan;
};

}  // namespace cofisearch
