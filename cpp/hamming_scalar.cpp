// Portable Hamming kernel: the reference every SIMD level is tested against, and the
// fallback on processors (or architectures) without AVX2. Compiled with the baseline
// flags only, so __builtin_popcountll may become a library call; that is the price of
// running anywhere.
#include <algorithm>
#include <cstring>
#include <initializer_list>

#include "kernels.h"

namespace cofisearch {

std::uint32_t hamming_b8_distance_scalar(const std::uint8_t* a, const std::uint8_t* b,
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

void hamming_b8_pack_scalar(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                            std::uint64_t* panel) {
  const std::size_t words = (nbytes + 7) / 8;
  const std::size_t full = nbytes / 8;
  const std::size_t tail = nbytes % 8;
  const std::size_t groups = (n + kCodeGroup - 1) / kCodeGroup;
  for (std::size_t g = 0; g < groups; ++g) {
    std::uint64_t* out = panel + g * words * kCodeGroup;
    for (std::size_t l = 0; l < kCodeGroup; ++l) {
      const std::size_t i = g * kCodeGroup + l;
      if (i >= n) {
        for (std::size_t j = 0; j < words; ++j) out[j * kCodeGroup + l] = 0;
        continue;
      }
      // Little-endian words, as a vector load of the code would read them. Copies of a
      // constant 8 bytes compile to one load; the partial last word is built bytewise,
      // its bytes past nbytes zero in both codes and queries so that they add nothing.
      const std::uint8_t* code = codes + i * nbytes;
      for (std::size_t j = 0; j < full; ++j) {
        std::uint64_t w;
        std::memcpy(&w, code + 8 * j, 8);
        out[j * kCodeGroup + l] = w;
      }
      if (tail) {
        std::uint64_t w = 0;
        for (std::size_t b = 0; b < tail; ++b)
          w |= static_cast<std::uint64_t>(code[8 * full + b]) << (8 * b);
        out[full * kCodeGroup + l] = w;
      }
    }
  }
}

void hamming_b8_pack_groups_scalar(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                                   std::uint64_t* panel) {
  const std::size_t words = (nbytes + 7) / 8;
  const std::size_t ld = (n + kDistBlock - 1) / kDistBlock * kDistBlock;
  std::fill_n(panel, ld * words, std::uint64_t(0));
  for (std::size_t i = 0; i < n; ++i) {
    // Code i at panel row r, lane r % 8 of group r / 8 (the map is its own inverse).
    const std::size_t r = (i & ~std::size_t(63)) | (i & 7) << 3 | (i >> 3 & 7);
    std::uint64_t* out = panel + r / kCodeGroup * words * kCodeGroup + r % kCodeGroup;
    const std::uint8_t* code = codes + i * nbytes;
    for (std::size_t j = 0; j < words; ++j) {
      std::uint64_t w = 0;
      for (std::size_t b = 0; b < 8 && 8 * j + b < nbytes; ++b)
        w |= static_cast<std::uint64_t>(code[8 * j + b]) << (8 * b);
      out[j * kCodeGroup] = w;
    }
  }
}

namespace {

// Transposes 8 x 8 bytes in place: afterwards byte r of x[j] is what byte j of x[r] was.
// Three rounds of swapping the off-diagonal halves of 2 x 2 blocks, of bytes, then of
// byte pairs, then of 4-byte halves.
void transpose_bytes(std::uint64_t* x) {
  for (int r = 0; r < 8; r += 2) {
    const std::uint64_t t = ((x[r] >> 8) ^ x[r + 1]) & 0x00FF00FF00FF00FFull;
    x[r] ^= t << 8;
    x[r + 1] ^= t;
  }
  for (int r : {0, 1, 4, 5}) {
    const std::uint64_t t = ((x[r] >> 16) ^ x[r + 2]) & 0x0000FFFF0000FFFFull;
    x[r] ^= t << 16;
    x[r + 2] ^= t;
  }
  for (int r = 0; r < 4; ++r) {
    const std::uint64_t t = ((x[r] >> 32) ^ x[r + 4]) & 0x00000000FFFFFFFFull;
    x[r] ^= t << 32;
    x[r + 4] ^= t;
  }
}

}  // namespace

void hamming_b8_pack_planes_scalar(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                                   std::uint64_t* panel) {
  // Eight codes' 8-byte word j at a time, transposed in registers into 8 bytes of 8
  // planes (little-endian, as the AVX-512 kernel reads them): a third of the time of
  // placing the bytes one by one. The zeros past nbytes and n are written too.
  const std::size_t words = (nbytes + 7) / 8;
  const std::size_t full = nbytes / 8;
  const std::size_t ld = (n + kDistBlock - 1) / kDistBlock * kDistBlock;
  constexpr std::size_t kGroupsPerBlock = kDistBlock / kCodeGroup;
  for (std::size_t g = 0; g < ld / kCodeGroup; ++g) {
    std::uint64_t* out = panel + g / kGroupsPerBlock * 8 * words * kGroupsPerBlock + g % kGroupsPerBlock;
    for (std::size_t j = 0; j < words; ++j) {
      std::uint64_t x[8];
      for (std::size_t r = 0; r < 8; ++r) {
        const std::size_t i = g * kCodeGroup + r;
        x[r] = 0;
        if (i >= n) continue;
        const std::uint8_t* code = codes + i * nbytes + 8 * j;
        if (j < full) {
          std::memcpy(&x[r], code, 8);
        } else {
          for (std::size_t b = 0; b < nbytes - 8 * full; ++b)
            x[r] |= static_cast<std::uint64_t>(code[b]) << (8 * b);
        }
      }
      transpose_bytes(x);
      for (std::size_t p = 0; p < 8; ++p) out[(8 * j + p) * kGroupsPerBlock] = x[p];
    }
  }
}

std::size_t hamming_b8_scan_packed_scalar(const std::uint64_t* qwords, std::size_t nq,
                                          const std::uint64_t* panel, std::size_t n,
                                          std::size_t words, const std::uint32_t* thresh,
                                          HammingHit* hits) {
  std::size_t h = 0;
  for (std::size_t q = 0; q < nq; ++q) {
    const std::uint64_t* qw = qwords + q * words;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t* group = panel + i / kCodeGroup * words * kCodeGroup + i % kCodeGroup;
      std::uint32_t d = 0;
      for (std::size_t j = 0; j < words; ++j)
        d += static_cast<std::uint32_t>(__builtin_popcountll(group[j * kCodeGroup] ^ qw[j]));
      if (d < thresh[q]) hits[h++] = {static_cast<std::uint32_t>(q),
                                      static_cast<std::uint32_t>(i), d};
    }
  }
  return h;
}

std::size_t hamming_b8_scan_scalar(const std::uint8_t* queries, std::size_t nq,
                                   const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                                   const std::uint32_t* thresh, HammingHit* hits) {
  std::size_t h = 0;
  for (std::size_t q = 0; q < nq; ++q) {
    const std::uint8_t* qp = queries + q * nbytes;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t d = hamming_b8_distance_scalar(qp, codes + i * nbytes, nbytes);
      if (d < thresh[q]) hits[h++] = {static_cast<std::uint32_t>(q),
                                      static_cast<std::uint32_t>(i), d};
    }
  }
  return h;
}

void hamming_b8_dist_packed_scalar(const std::uint64_t* qwords, std::size_t nq,
                                   const std::uint64_t* panel, std::size_t n, std::size_t words,
                                   std::uint8_t* dist, std::size_t ld, const RowBlocks& rb) {
  for (std::size_t q = 0; q < nq; ++q) {
    const std::uint64_t* qw = qwords + q * words;
    std::uint8_t* row = dist + q * ld;
    for (std::size_t r = 0; r < ld; ++r) {
      // Panel row r (group r / 8, lane r % 8) holds code i (kernels.h).
      const std::size_t i = (r & ~std::size_t(63)) | (r & 7) << 3 | (r >> 3 & 7);
      std::uint32_t d = kByteDistanceMax;
      if (i < n) {
        const std::uint64_t* group = panel + r / kCodeGroup * words * kCodeGroup + r % kCodeGroup;
        d = 0;
        for (std::size_t j = 0; j < words; ++j)
          d += static_cast<std::uint32_t>(__builtin_popcountll(group[j * kCodeGroup] ^ qw[j]));
      }
      row[i] = static_cast<std::uint8_t>(d < kByteDistanceMax ? d : kByteDistanceMax);
    }
    std::uint32_t* blocks = rb.blocks + q * (ld / kDistBlock);
    std::uint32_t nb = 0;
    for (std::size_t b = 0; b < ld; b += kDistBlock)
      if (*std::min_element(row + b, row + b + kDistBlock) <= rb.t)
        blocks[nb++] = static_cast<std::uint32_t>(b);
    rb.listed[q] = nb;
  }
}

std::size_t hamming_u8_count_scalar(const std::uint8_t* d, const std::uint32_t* from,
                                    std::size_t nfrom, const std::uint8_t* t,
                                    std::uint32_t* counts, std::uint32_t* blocks) {
  std::fill_n(counts, kCountSpan, 0u);
  std::size_t nb = 0;
  for (std::size_t b = 0; b < nfrom; ++b) {
    const std::uint8_t* block = d + from[b];
    for (std::size_t j = 0; j < kCountSpan; ++j)
      counts[j] += static_cast<std::uint32_t>(
          std::count_if(block, block + kDistBlock, [&](std::uint8_t v) { return v <= t[j]; }));
    const std::uint32_t offset = from[b];
    if (*std::min_element(block, block + kDistBlock) <= t[kCountSpan - 1]) blocks[nb++] = offset;
  }
  return nb;
}

std::size_t hamming_u8_collect_scalar(const std::uint8_t* d, const std::uint32_t* blocks,
                                      std::size_t nb, std::uint8_t t, std::size_t ties,
                                      std::uint32_t* lt, std::uint32_t* eq) {
  std::uint32_t* const first = lt;
  for (std::size_t b = 0; b < nb; ++b)
    for (std::size_t i = blocks[b]; i < blocks[b] + kDistBlock; ++i) {
      const std::uint8_t v = d[i];
      if (v < t) {
        *lt++ = static_cast<std::uint32_t>(i);
      } else if (v == t && ties) {
        *eq++ = static_cast<std::uint32_t>(i);
        --ties;
      }
    }
  return static_cast<std::size_t>(lt - first);
}

}  // namespace cofisearch
