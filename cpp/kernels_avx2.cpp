// AVX2 + FMA + POPCNT kernels, compiled only in this translation unit.
//
// Hamming: without VPOPCNTQ, codes of up to 256 bits are counted with the scalar POPCNT
// instruction on 64-bit words (it issues several per cycle, and a code of at most four
// words needs no reduction); a group of queries shares every loaded code. Wider codes
// use the nibble-lookup popcount (VPSHUFB on both halves of each byte, summed with
// VPSADBW), 256 bits per step. Tails are plain byte loops.
//
// Inner product: the same register-tiled scheme as the AVX-512 kernels with 8-float
// registers: MR x NR accumulators, then a horizontal-add tree into one register of 8
// scores.
#include <immintrin.h>

#include <cstring>

#include "kernels.h"

namespace cofisearch {
namespace avx2 {
namespace {

using u8 = std::uint8_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
using sz = std::size_t;

constexpr int kQueryGroup = 4;

inline u64 load64(const u8* p) {
  u64 w;
  std::memcpy(&w, p, 8);
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

sz hamming_scan(const u8* queries, sz nq, const u8* codes, sz n, sz nbytes,
                const u32* thresh, HammingHit* hits) {
  switch (nbytes) {
    case 8: return scan_words<1>(queries, nq, codes, n, thresh, hits);
    case 16: return scan_words<2>(queries, nq, codes, n, thresh, hits);
    case 24: return scan_words<3>(queries, nq, codes, n, thresh, hits);
    case 32: return scan_words<4>(queries, nq, codes, n, thresh, hits);
    default: return scan_any(queries, nq, codes, n, nbytes, thresh, hits);
  }
}

// ---- inner product -------------------------------------------------------------------

// Sums of 8 accumulators, accumulator l in lane l.
inline __m256 reduce8_ps(const __m256* a) {
  const __m256 ab = _mm256_hadd_ps(a[0], a[1]), cd = _mm256_hadd_ps(a[2], a[3]);
  const __m256 ef = _mm256_hadd_ps(a[4], a[5]), gh = _mm256_hadd_ps(a[6], a[7]);
  const __m256 lo = _mm256_hadd_ps(ab, cd), hi = _mm256_hadd_ps(ef, gh);
  return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

inline __m256i tail_mask(sz left) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), idx);
}

template <int MR, int NR>
inline __m256 dot_tile(const float* const* q, const float* const* r, sz dim) {
  static_assert(MR * NR == 8, "tile must fill 8 lanes");
  __m256 acc[8];
  for (int l = 0; l < 8; ++l) acc[l] = _mm256_setzero_ps();
  sz i = 0;
  for (; i + 8 <= dim; i += 8) {
    __m256 rv[NR];
    for (int j = 0; j < NR; ++j) rv[j] = _mm256_loadu_ps(r[j] + i);
    for (int a = 0; a < MR; ++a) {
      const __m256 qv = _mm256_loadu_ps(q[a] + i);
      for (int j = 0; j < NR; ++j) acc[a * NR + j] = _mm256_fmadd_ps(qv, rv[j], acc[a * NR + j]);
    }
  }
  if (i < dim) {
    const __m256i m = tail_mask(dim - i);
    __m256 rv[NR];
    for (int j = 0; j < NR; ++j) rv[j] = _mm256_maskload_ps(r[j] + i, m);
    for (int a = 0; a < MR; ++a) {
      const __m256 qv = _mm256_maskload_ps(q[a] + i, m);
      for (int j = 0; j < NR; ++j) acc[a * NR + j] = _mm256_fmadd_ps(qv, rv[j], acc[a * NR + j]);
    }
  }
  return reduce8_ps(acc);
}

template <int MR, int NR>
ScoreHit* scan_group(const float* queries, sz q0, const float* rows, sz n, sz dim,
                     const float* thresh, ScoreHit* out) {
  const float* q[MR];
  alignas(32) float tt[8];
  for (int a = 0; a < MR; ++a) {
    q[a] = queries + (q0 + a) * dim;
    for (int j = 0; j < NR; ++j) tt[a * NR + j] = thresh[q0 + a];
  }
  const __m256 tv = _mm256_load_ps(tt);
  for (sz i = 0; i < n; i += NR) {
    const sz rem = n - i < NR ? n - i : NR;
    const float* r[NR];
    for (int j = 0; j < NR; ++j) r[j] = rows + (i + (static_cast<sz>(j) < rem ? j : rem - 1)) * dim;
    const __m256 s = dot_tile<MR, NR>(q, r, dim);
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s, tv, _CMP_NLE_UQ)));
    if (rem < NR) {
      unsigned keep = 0;
      for (int a = 0; a < MR; ++a) keep |= ((1u << rem) - 1) << (a * NR);
      m &= keep;
    }
    if (m) {
      alignas(32) float sc[8];
      _mm256_store_ps(sc, s);
      while (m) {
        unsigned l = static_cast<unsigned>(__builtin_ctz(m));
        *out++ = {static_cast<u32>(q0 + l / NR), static_cast<u32>(i + l % NR), sc[l]};
        m &= m - 1;
      }
    }
  }
  return out;
}

sz dot_scan(const float* queries, sz nq, const float* rows, sz n, sz dim, float,
            const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  sz q = 0;
  for (; q + 2 <= nq; q += 2) out = scan_group<2, 4>(queries, q, rows, n, dim, thresh, out);
  for (; q < nq; ++q) out = scan_group<1, 8>(queries, q, rows, n, dim, thresh, out);
  return static_cast<sz>(out - hits);
}

void dot_gather(const float* query, const float* base, sz dim, const std::int64_t* ids, sz m,
                float* scores) {
  const float* q[1] = {query};
  for (sz i = 0; i < m; i += 8) {
    const sz rem = m - i < 8 ? m - i : 8;
    const float* r[8];
    for (sz j = 0; j < 8; ++j)
      r[j] = base + static_cast<sz>(ids[i + (j < rem ? j : rem - 1)]) * dim;
    alignas(32) float s[8];
    _mm256_store_ps(s, dot_tile<1, 8>(q, r, dim));
    for (sz j = 0; j < rem; ++j) scores[i + j] = s[j];
  }
}

}  // namespace

const KernelSet kernels = {hamming_scan, dot_scan, dot_gather, nullptr, nullptr, nullptr};

}  // namespace avx2
}  // namespace cofisearch
