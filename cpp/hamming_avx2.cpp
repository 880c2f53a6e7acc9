// AVX2 + POPCNT Hamming kernel, compiled only in this translation unit.
//
// Without VPOPCNTQ, codes of up to 256 bits are counted with the scalar POPCNT
// instruction on 64-bit words (it issues several per cycle, and a code of at most four
// words needs no reduction); a group of queries shares every loaded code. Wider codes
// use the nibble-lookup popcount (VPSHUFB on both halves of each byte, summed with
// VPSADBW), 256 bits per step. Tails are plain byte loops.
//
// Packed panels (kernels.h) hold 4 codes' word j in each half-group register, so the
// nibble-lookup counts of all words add up per byte with no reduction across lanes, and
// one VPSADBW per 31 words turns them into 4 distances.
#include <immintrin.h>

#include "kernels.h"

namespace cofisearch {
namespace {

using u8 = std::uint8_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
using sz = std::size_t;

constexpr int kQueryGroup = 4;

inline u64 load64(const u8* p) {
  u64 w;
  __builtin_memcpy(&w, p, 8);
  return w;
}

// Codes of exactly W = 8 * R bytes, R <= 4: query words stay in registers.
template <int R>
sz scan_words(const u8* queries, sz nq, const u8* codes, sz n, const u32* thresh,
              HammingHit* hits) {
  constexpr sz W = 8 * R;
  HammingHit* out = hits;
  for (sz q0 = 0; q0 < nq; q0 += kQueryGroup) {
    const sz g = nq - q0 < kQueryGroup ? nq - q0 : kQueryGroup;
    u64 qw[kQueryGroup][R];
    u32 t[kQueryGroup];
    for (sz j = 0; j < kQueryGroup; ++j) {
      const sz src = q0 + (j < g ? j : g - 1);
      for (int r = 0; r < R; ++r) qw[j][r] = load64(queries + src * W + 8 * r);
      t[j] = j < g ? thresh[q0 + j] : 0;
    }
    for (sz i = 0; i < n; ++i) {
      u64 cw[R];
      for (int r = 0; r < R; ++r) cw[r] = load64(codes + i * W + 8 * r);
      for (sz j = 0; j < kQueryGroup; ++j) {
        u32 d = 0;
        for (int r = 0; r < R; ++r) d += static_cast<u32>(_mm_popcnt_u64(cw[r] ^ qw[j][r]));
        if (d < t[j]) *out++ = {static_cast<u32>(q0 + j), static_cast<u32>(i), d};
      }
    }
  }
  return static_cast<sz>(out - hits);
}

inline __m256i popcount_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_add_epi8(lo, hi);
}

inline u32 hsum_epi64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return static_cast<u32>(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
}

// Any width: 32-byte vector steps, then 8-byte words, then bytes.
sz scan_any(const u8* queries, sz nq, const u8* codes, sz n, sz nbytes, const u32* thresh,
            HammingHit* hits) {
  HammingHit* out = hits;
  const sz vec = nbytes / 32;
  const sz words_end = vec * 32 + (nbytes - vec * 32) / 8 * 8;
  for (sz q = 0; q < nq; ++q) {
    const u8* qp = queries + q * nbytes;
    for (sz i = 0; i < n; ++i) {
      const u8* cp = codes + i * nbytes;
      __m256i acc = _mm256_setzero_si256();
      for (sz v = 0; v < vec; ++v) {
        const __m256i x = _mm256_xor_si256(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cp + 32 * v)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp + 32 * v)));
        // A byte count is at most 8, so summing 4 steps in bytes before widening is safe;
        // widening every step keeps the loop simple and costs one VPSADBW.
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(popcount_bytes(x), _mm256_setzero_si256()));
      }
      u32 d = vec ? hsum_epi64(acc) : 0;
      sz b = vec * 32;
      for (; b < words_end; b += 8)
        d += static_cast<u32>(_mm_popcnt_u64(load64(cp + b) ^ load64(qp + b)));
      for (; b < nbytes; ++b) d += static_cast<u32>(_mm_popcnt_u32(cp[b] ^ qp[b]));
      if (d < thresh[q]) *out++ = {static_cast<u32>(q), static_cast<u32>(i), d};
    }
  }
  return static_cast<sz>(out - hits);
}

// A byte of a lookup count is at most 8, so 31 words add up without overflowing a byte.
constexpr sz kWordsPerSad = 31;

// G queries against one half (4 codes) of each group of a panel.
template <int G>
HammingHit* packed_group(const u64* qwords, sz q0, const u64* panel, sz n, sz words,
                         const u32* thresh, HammingHit* out) {
  const u64* qw = qwords + q0 * words;
  __m256i tv[G];
  for (int j = 0; j < G; ++j) tv[j] = _mm256_set1_epi64x(static_cast<long long>(thresh[q0 + j]));
  for (sz i = 0; i < n; i += 4) {
    const u64* half = panel + (i / 8) * 8 * words + (i % 8);
    __m256i dist[G];
    for (int j = 0; j < G; ++j) dist[j] = _mm256_setzero_si256();
    for (sz w0 = 0; w0 < words; w0 += kWordsPerSad) {
      const sz w1 = words - w0 < kWordsPerSad ? words : w0 + kWordsPerSad;
      __m256i bytes[G];
      for (int j = 0; j < G; ++j) bytes[j] = _mm256_setzero_si256();
      for (sz w = w0; w < w1; ++w) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half + 8 * w));
        for (int j = 0; j < G; ++j)
          bytes[j] = _mm256_add_epi8(
              bytes[j], popcount_bytes(_mm256_xor_si256(
                            c, _mm256_set1_epi64x(static_cast<long long>(qw[j * words + w])))));
      }
      for (int j = 0; j < G; ++j)
        dist[j] = _mm256_add_epi64(dist[j], _mm256_sad_epu8(bytes[j], _mm256_setzero_si256()));
    }
    const unsigned valid = n - i >= 4 ? 0xFu : (1u << (n - i)) - 1;
    for (int j = 0; j < G; ++j) {
      // Distances and thresholds are below 2^32, so the signed compare is exact.
      unsigned m = static_cast<unsigned>(_mm256_movemask_pd(
                       _mm256_castsi256_pd(_mm256_cmpgt_epi64(tv[j], dist[j])))) & valid;
      if (!m) continue;
      alignas(32) u64 lanes[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), dist[j]);
      do {
        const unsigned p = static_cast<unsigned>(__builtin_ctz(m));
        *out++ = {static_cast<u32>(q0 + j), static_cast<u32>(i + p), static_cast<u32>(lanes[p])};
        m &= m - 1;
      } while (m);
    }
  }
  return out;
}

// G queries' rows of byte distances (kernels.h), counted with the scalar POPCNT (faster
// than the nibble lookup on the narrow codes that rows of distances are for); each loaded
// word serves the G queries.
template <int G>
void dist_group(const u64* qwords, sz q0, const u64* panel, sz n, sz words, u8* dist, sz ld) {
  const u64* qw = qwords + q0 * words;
  for (sz r = 0; r < ld; r += 8, panel += 8 * words) {
    // Lane l of this group holds code first + 8l (kernels.h).
    const sz first = (r & ~sz(63)) | (r >> 3 & 7);
    u32 d[G][8] = {};
    for (sz w = 0; w < words; ++w)
      for (sz l = 0; l < 8; ++l) {
        const u64 c = panel[8 * w + l];
        for (int j = 0; j < G; ++j) d[j][l] += static_cast<u32>(_mm_popcnt_u64(c ^ qw[j * words + w]));
      }
    for (int j = 0; j < G; ++j)
      for (sz l = 0; l < 8; ++l) {
        const u32 v = first + 8 * l < n ? d[j][l] : kByteDistanceMax;
        dist[(q0 + j) * ld + first + 8 * l] = static_cast<u8>(v < kByteDistanceMax ? v : kByteDistanceMax);
      }
  }
}

// Bytes v <= t, as a bit per byte.
inline u32 le_mask(__m256i v, __m256i t) {
  return static_cast<u32>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_min_epu8(v, t), v)));
}

}  // namespace

std::size_t hamming_b8_scan_packed_avx2(const std::uint64_t* qwords, std::size_t nq,
                                        const std::uint64_t* panel, std::size_t n,
                                        std::size_t words, const std::uint32_t* thresh,
                                        HammingHit* hits) {
  HammingHit* out = hits;
  sz q = 0;
  for (; q + 4 <= nq; q += 4) out = packed_group<4>(qwords, q, panel, n, words, thresh, out);
  for (; q < nq; ++q) out = packed_group<1>(qwords, q, panel, n, words, thresh, out);
  return static_cast<sz>(out - hits);
}

std::size_t hamming_b8_scan_avx2(const std::uint8_t* queries, std::size_t nq,
                                 const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                                 const std::uint32_t* thresh, HammingHit* hits) {
  switch (nbytes) {
    case 8: return scan_words<1>(queries, nq, codes, n, thresh, hits);
    case 16: return scan_words<2>(queries, nq, codes, n, thresh, hits);
    case 24: return scan_words<3>(queries, nq, codes, n, thresh, hits);
    case 32: return scan_words<4>(queries, nq, codes, n, thresh, hits);
    default: return scan_any(queries, nq, codes, n, nbytes, thresh, hits);
  }
}

void hamming_b8_dist_packed_avx2(const std::uint64_t* qwords, std::size_t nq,
                                 const std::uint64_t* panel, std::size_t n, std::size_t words,
                                 std::uint8_t* dist, std::size_t ld, const RowBlocks& rb) {
  sz q = 0;
  for (; q + kQueryGroup <= nq; q += kQueryGroup)
    dist_group<kQueryGroup>(qwords, q, panel, n, words, dist, ld);
  for (; q < nq; ++q) dist_group<1>(qwords, q, panel, n, words, dist, ld);
  const __m256i t = _mm256_set1_epi8(static_cast<char>(rb.t));
  for (q = 0; q < nq; ++q) {
    const u8* row = dist + q * ld;
    u32* blocks = rb.blocks + q * (ld / kDistBlock);
    u32 nb = 0;
    for (sz i = 0; i < ld; i += kDistBlock) {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i + 32));
      blocks[nb] = static_cast<u32>(i);
      nb += (le_mask(lo, t) | le_mask(hi, t)) != 0;
    }
    rb.listed[q] = nb;
  }
}

std::size_t hamming_u8_count_avx2(const std::uint8_t* d, const std::uint32_t* from,
                                  std::size_t nfrom, const std::uint8_t* t, std::uint32_t* counts,
                                  std::uint32_t* blocks) {
  const __m256i t0 = _mm256_set1_epi8(static_cast<char>(t[0])),
                t1 = _mm256_set1_epi8(static_cast<char>(t[1])),
                t2 = _mm256_set1_epi8(static_cast<char>(t[2])),
                t3 = _mm256_set1_epi8(static_cast<char>(t[3]));
  u64 c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  sz nb = 0;
  for (sz b = 0; b < nfrom; ++b) {
    const u32 i = from[b];
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + i));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + i + 32));
    c0 += static_cast<u64>(_mm_popcnt_u32(le_mask(lo, t0)) + _mm_popcnt_u32(le_mask(hi, t0)));
    c1 += static_cast<u64>(_mm_popcnt_u32(le_mask(lo, t1)) + _mm_popcnt_u32(le_mask(hi, t1)));
    c2 += static_cast<u64>(_mm_popcnt_u32(le_mask(lo, t2)) + _mm_popcnt_u32(le_mask(hi, t2)));
    const u32 top = le_mask(lo, t3), top_hi = le_mask(hi, t3);
    c3 += static_cast<u64>(_mm_popcnt_u32(top) + _mm_popcnt_u32(top_hi));
    blocks[nb] = i;
    nb += (top | top_hi) != 0;
  }
  counts[0] = static_cast<u32>(c0);
  counts[1] = static_cast<u32>(c1);
  counts[2] = static_cast<u32>(c2);
  counts[3] = static_cast<u32>(c3);
  return nb;
}

std::size_t hamming_u8_collect_avx2(const std::uint8_t* d, const std::uint32_t* blocks,
                                    std::size_t nb, std::uint8_t t, std::size_t ties,
                                    std::uint32_t* lt, std::uint32_t* eq) {
  u32* const first = lt;
  const __m256i tv = _mm256_set1_epi8(static_cast<char>(t));
  for (sz b = 0; b < nb; ++b) {
    const sz i = blocks[b];
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + i));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + i + 32));
    const u64 le = le_mask(lo, tv) | static_cast<u64>(le_mask(hi, tv)) << 32;
    const u64 same = static_cast<u32>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, tv))) |
                     static_cast<u64>(static_cast<u32>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, tv))))
                         << 32;
    for (u64 m = le & ~same; m; m &= m - 1)
      *lt++ = static_cast<u32>(i + static_cast<sz>(__builtin_ctzll(m)));
    for (u64 m = ties ? same : 0; m && ties; m &= m - 1, --ties)
      *eq++ = static_cast<u32>(i + static_cast<sz>(__builtin_ctzll(m)));
  }
  return static_cast<sz>(lt - first);
}

}  // namespace cofisearch
