// AVX-512 Hamming kernel (F, BW, VL, VPOPCNTDQ and BITALG), compiled only in this
// translation unit.
//
// VPOPCNTQ counts bits per 64-bit lane, so a 512-bit register holds 8 codes of 64 bits,
// 4 of 128, 2 of 256 or a part of one longer code. Summing lanes per code one register
// at a time (a horizontal reduction per code) is what made long codes slow in earlier
// engines; here the lane sums of several registers are folded together with
// unpack/shuffle adds, so 8 codes come out in one register whatever the width, and one
// unsigned compare against the threshold rejects all 8. The fold permutes codes within
// the register; the kPerm tables map lanes back. Each loaded code register is reused by
// a group of queries held in registers. Other widths (any multiple of 8 bits) read each
// code as one or more registers, the last one masked to the code's bytes, and fold 8
// codes at a time. Tails use masked loads.
//
// Batches read packed panels instead (kernels.h): 8 codes' word j in one register, so a
// query costs one XOR, one VPOPCNTQ and one add per word and 8 codes, and nothing else,
// at every width.
#include <immintrin.h>

#include "kernels.h"

namespace cofisearch {
namespace {

using u8 = std::uint8_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
using sz = std::size_t;

constexpr sz kPrefetchBytes = 8192;
constexpr int kShuffleEven = _MM_SHUFFLE(2, 0, 2, 0);
constexpr int kShuffleOdd = _MM_SHUFFLE(3, 1, 3, 1);

alignas(8) constexpr u8 kPermIdentity[8] = {0, 1, 2, 3, 4, 5, 6, 7};
alignas(8) constexpr u8 kPerm128[8] = {0, 4, 1, 5, 2, 6, 3, 7};
alignas(8) constexpr u8 kPerm256[8] = {0, 2, 1, 3, 4, 6, 5, 7};

// Mask of the 64-bit lanes of register `v` that lie inside the first `total` words.
inline __mmask8 word_mask(sz total, sz v) {
  if (total <= 8 * v) return 0;
  sz left = total - 8 * v;
  return left >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << left) - 1);
}

// Lanes whose code (through perm) is among the first `rem` codes of the group.
inline __mmask8 valid_lanes(const u8* perm, sz rem) {
  unsigned m = 0;
  for (int p = 0; p < 8; ++p)
    if (perm[p] < rem) m |= 1u << p;
  return static_cast<__mmask8>(m);
}

inline void emit(HammingHit*& out, u32 query, sz base, __mmask8 m, __m512i d,
                 const u8* perm) {
  alignas(64) u64 lanes[8];
  _mm512_store_si512(lanes, d);
  unsigned bits = m;
  while (bits) {
    unsigned p = static_cast<unsigned>(__builtin_ctz(bits));
    *out++ = {query, static_cast<u32>(base + perm[p]), static_cast<u32>(lanes[p])};
    bits &= bits - 1;
  }
}

// Pairwise sums of adjacent lanes of a and b, interleaved: lane 2i holds a's pair i,
// lane 2i+1 holds b's pair i.
inline __m512i fold_pairs(__m512i a, __m512i b) {
  return _mm512_add_epi64(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}

// Sums of 128-bit chunks 0+1 and 2+3 of a, then of b.
inline __m512i fold_chunks(__m512i a, __m512i b) {
  return _mm512_add_epi64(_mm512_shuffle_i64x2(a, b, kShuffleEven),
                          _mm512_shuffle_i64x2(a, b, kShuffleOdd));
}

// Full sums of 8 registers, one per lane, in order.
inline __m512i reduce8(const __m512i* p) {
  __m512i u01 = fold_pairs(p[0], p[1]), u23 = fold_pairs(p[2], p[3]);
  __m512i u45 = fold_pairs(p[4], p[5]), u67 = fold_pairs(p[6], p[7]);
  return fold_chunks(fold_chunks(u01, u23), fold_chunks(u45, u67));
}

inline __m512i popxor(__m512i a, __m512i b) {
  return _mm512_popcnt_epi64(_mm512_xor_si512(a, b));
}


// Widths of 8, 16 and 32 bytes: a register holds 8 / W codes, R = W / 8 registers cover
// 8 codes, and the fold turns R registers into one register of 8 distances.
template <int R>
inline __m512i distances_narrow(const __m512i* c, __m512i qv) {
  if constexpr (R == 1) {
    return popxor(c[0], qv);
  } else if constexpr (R == 2) {
    return fold_pairs(popxor(c[0], qv), popxor(c[1], qv));
  } else {
    return fold_chunks(fold_pairs(popxor(c[0], qv), popxor(c[1], qv)),
                       fold_pairs(popxor(c[2], qv), popxor(c[3], qv)));
  }
}

template <int R>
inline __m512i broadcast_query(const u8* q) {
  if constexpr (R == 1) {
    long long w;
    __builtin_memcpy(&w, q, 8);
    return _mm512_set1_epi64(w);
  } else if constexpr (R == 2) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  } else {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
  }
}

template <int R>
constexpr const u8* narrow_perm() {
  return R == 1 ? kPermIdentity : R == 2 ? kPerm128 : kPerm256;
}

// G queries (held in registers) against every code, U groups of 8 codes per iteration.
// One OR of all compare masks decides whether any lane needs the slow path, so the loop
// body is branch-free in the common case where every code is rejected.
template <int R, int G, int U>
HammingHit* scan_group(const u8* queries, sz q0, const u8* codes, sz n, const u32* thresh,
                       HammingHit* out) {
  constexpr sz W = 8 * R;
  const u8* perm = narrow_perm<R>();
  __m512i qv[G], tv[G];
  for (int j = 0; j < G; ++j) {
    qv[j] = broadcast_query<R>(queries + (q0 + j) * W);
    tv[j] = _mm512_set1_epi64(static_cast<long long>(thresh[q0 + j]));
  }
  sz i = 0;
  for (; i + 8 * U <= n; i += 8 * U) {
    __m512i d[U][G];
    __mmask8 m[U][G];
    __mmask8 any = 0;
    if constexpr (G <= 2) {
      // Few queries stream the codes at memory speed; the hardware prefetcher alone
      // leaves a few percent of the bandwidth unused.
      for (int line = 0; line < U * R; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(codes + i * W + 64 * line + kPrefetchBytes),
                     _MM_HINT_T0);
    }
    for (int u = 0; u < U; ++u) {
      __m512i c[R];
      for (int r = 0; r < R; ++r)
        c[r] = _mm512_loadu_si512(codes + (i + 8 * u + 8 * r / R) * W);
      for (int j = 0; j < G; ++j) {
        d[u][j] = distances_narrow<R>(c, qv[j]);
        m[u][j] = _mm512_cmplt_epu64_mask(d[u][j], tv[j]);
        any |= m[u][j];
      }
    }
    if (__builtin_expect(any != 0, 0)) {
      // All masks of one code group in one word (bit 8 * query + lane), so the hits come
      // out of a single bit loop instead of one hard-to-predict branch per query.
      for (int u = 0; u < U; ++u) {
        u64 bits = 0;
        for (int j = 0; j < G; ++j) bits |= static_cast<u64>(m[u][j]) << (8 * j);
        if (!bits) continue;
        alignas(64) u64 lanes[G][8];
        for (int j = 0; j < G; ++j) _mm512_store_si512(lanes[j], d[u][j]);
        do {
          const unsigned p = static_cast<unsigned>(__builtin_ctzll(bits));
          *out++ = {static_cast<u32>(q0 + (p >> 3)), static_cast<u32>(i + 8 * u + perm[p & 7]),
                    static_cast<u32>(lanes[p >> 3][p & 7])};
          bits &= bits - 1;
        } while (bits);
      }
    }
  }
  for (; i < n; i += 8) {
    const sz rem = n - i < 8 ? n - i : 8;
    __m512i c[R];
    for (int r = 0; r < R; ++r)
      c[r] = _mm512_maskz_loadu_epi64(word_mask(rem * R, r), codes + (i + 8 * r / R) * W);
    const __mmask8 valid = rem == 8 ? static_cast<__mmask8>(0xFF) : valid_lanes(perm, rem);
    for (int j = 0; j < G; ++j) {
      const __m512i d = distances_narrow<R>(c, qv[j]);
      const __mmask8 m = _mm512_cmplt_epu64_mask(d, tv[j]) & valid;
      if (m) emit(out, static_cast<u32>(q0 + j), i, m, d, perm);
    }
  }
  return out;
}

template <int R>
sz scan_narrow(const u8* queries, sz nq, const u8* codes, sz n, const u32* thresh,
               HammingHit* hits) {
  // Wider groups reuse each loaded code more; narrow codes have registers to spare.
  constexpr int kWide = R == 4 ? 4 : 8;
  HammingHit* out = hits;
  sz q = 0;
  for (; q + kWide <= nq; q += kWide)
    out = scan_group<R, kWide, 1>(queries, q, codes, n, thresh, out);
  for (; q + 2 <= nq; q += 2) out = scan_group<R, 2, 2>(queries, q, codes, n, thresh, out);
  for (; q < nq; ++q) out = scan_group<R, 1, 4>(queries, q, codes, n, thresh, out);
  return static_cast<sz>(out - hits);
}

// Any other width: each code spans `regs` registers, the last one masked to the code's
// bytes when nbytes is not a multiple of 64; their popcounts are summed per code before
// the 8-code fold. M > 0 fixes the register count at compile time (so the query
// registers stay in registers); M == 0 reads it at run time.
template <int M>
sz scan_wide(const u8* queries, sz nq, const u8* codes, sz n, sz nbytes, const u32* thresh,
             HammingHit* hits) {
  const sz regs = M > 0 ? static_cast<sz>(M) : (nbytes + 63) / 64;
  const sz tail = nbytes - 64 * (regs - 1);
  const __mmask64 last = tail == 64 ? ~0ull : (~0ull >> (64 - tail));
  HammingHit* out = hits;
  for (sz q = 0; q < nq; ++q) {
    const u8* qp = queries + q * nbytes;
    const __m512i tv = _mm512_set1_epi64(static_cast<long long>(thresh[q]));
    const __m512i qlast = _mm512_maskz_loadu_epi8(last, qp + 64 * (regs - 1));
    for (sz i = 0; i < n; i += 8) {
      const sz rem = n - i < 8 ? n - i : 8;
      // One query streams the codes; as for narrow codes, the hardware prefetcher alone
      // leaves memory bandwidth unused (one query over 1M codes of 48 or 96 bytes, caches
      // flushed: 9.1-9.9 GB/s without, 11.1-11.9 with, 4 to 8 KB ahead).
      for (sz line = 0; line < nbytes / 8; ++line)
        _mm_prefetch(reinterpret_cast<const char*>(codes + i * nbytes + 64 * line + kPrefetchBytes),
                     _MM_HINT_T0);
      __m512i p[8];
      for (sz c = 0; c < 8; ++c) {
        // Missing codes of a tail group repeat the last one and are masked out below.
        const u8* cp = codes + (i + (c < rem ? c : rem - 1)) * nbytes;
        __m512i acc = popxor(_mm512_maskz_loadu_epi8(last, cp + 64 * (regs - 1)), qlast);
        for (sz r = 0; r + 1 < regs; ++r)
          acc = _mm512_add_epi64(acc, popxor(_mm512_loadu_si512(cp + 64 * r),
                                             _mm512_loadu_si512(qp + 64 * r)));
        p[c] = acc;
      }
      const __m512i d = reduce8(p);
      const __mmask8 m = _mm512_cmplt_epu64_mask(d, tv) &
                         static_cast<__mmask8>(rem == 8 ? 0xFF : (1u << rem) - 1);
      if (m) emit(out, static_cast<u32>(q), i, m, d, kPermIdentity);
    }
  }
  return static_cast<sz>(out - hits);
}

// Adds to acc[j] the distances of query j (words at qw + j * nw) to the 8 codes of a
// panel group. W > 0 fixes the words per code at compile time, W == 0 reads nw at run
// time (wide codes, where the loop costs little beside the popcounts). Query words are
// broadcast from memory as operands rather than held in registers, so G accumulators
// (and a caller's G thresholds) fit in the register file at any width.
template <int G, int W>
inline void add_distances(const u64* qw, const u64* group, sz nw, __m512i* acc) {
  // With many query words the compiler would hoist every broadcast out of the caller's
  // loop into registers it does not have and spill them; hiding the pointer's value
  // keeps them as memory operands. Few words fit, and stay hoisted.
  if constexpr (W == 0 || G * W > 16) __asm__("" : "+r"(qw));
  {
    const __m512i c = _mm512_loadu_si512(group);
    for (int j = 0; j < G; ++j)
      acc[j] = _mm512_add_epi64(acc[j],
                                popxor(c, _mm512_set1_epi64(static_cast<long long>(qw[j * nw]))));
  }
  sz w = 1;
  if constexpr (W == 0) {
    // Two words per step: half the loop overhead, and shorter add chains. Unrolled
    // further, the compiler computes every popcount of the group before adding any
    // and spills them.
#pragma GCC unroll 1
    for (; w + 2 <= nw; w += 2) {
      const __m512i c0 = _mm512_loadu_si512(group + 8 * w);
      const __m512i c1 = _mm512_loadu_si512(group + 8 * w + 8);
      for (int j = 0; j < G; ++j)
        acc[j] = _mm512_add_epi64(
            acc[j],
            _mm512_add_epi64(
                popxor(c0, _mm512_set1_epi64(static_cast<long long>(qw[j * nw + w]))),
                popxor(c1, _mm512_set1_epi64(static_cast<long long>(qw[j * nw + w + 1])))));
    }
  }
  for (; w < nw; ++w) {
    const __m512i c = _mm512_loadu_si512(group + 8 * w);
    for (int j = 0; j < G; ++j)
      acc[j] = _mm512_add_epi64(
          acc[j], popxor(c, _mm512_set1_epi64(static_cast<long long>(qw[j * nw + w]))));
  }
}

// G queries against a panel.
//
// Each accumulator starts at minus its query's threshold, so it ends at distance minus
// threshold, negative exactly for a hit (both are below 2^32). One OR of all G
// accumulators and one sign test then reject 8 codes for every query at once, where a
// compare per query and an OR of the masks cost about a word's work more per query.
template <int G, int W>
HammingHit* packed_group(const u64* qwords, sz q0, const u64* panel, sz n, sz words,
                         const u32* thresh, HammingHit* out) {
  const sz nw = W > 0 ? static_cast<sz>(W) : words;
  const u64* qw = qwords + q0 * nw;
  __m512i start[G];
  for (int j = 0; j < G; ++j)
    start[j] = _mm512_set1_epi64(-static_cast<long long>(thresh[q0 + j]));
  for (sz i = 0; i < n; i += 8, panel += 8 * nw) {
    __m512i acc[G];
    for (int j = 0; j < G; ++j) acc[j] = start[j];
    add_distances<G, W>(qw, panel, nw, acc);
    __m512i signs = acc[0];
    for (int j = 1; j < G; ++j) signs = _mm512_or_si512(signs, acc[j]);
    const __mmask8 valid =
        n - i >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << (n - i)) - 1);
    if (__builtin_expect((_mm512_movepi64_mask(signs) & valid) != 0, 0)) {
      for (int j = 0; j < G; ++j) {
        const __mmask8 m = _mm512_movepi64_mask(acc[j]) & valid;
        if (m) emit(out, static_cast<u32>(q0 + j), i, m, _mm512_sub_epi64(acc[j], start[j]),
                    kPermIdentity);
      }
    }
  }
  return out;
}

// G queries' rows of byte distances over a panel of byte planes (kernels.h), a block of
// 64 codes at a time: per plane and query one XOR, one VPOPCNTB and one saturating byte
// add (a plane adds at most 8, so a row saturates at kByteDistanceMax as it must), one
// store per block and query. The groups layout spent a shift or a merge per 8 codes and
// query putting qword counts into bytes, and as many again on the popcounts' port.
template <int G, int W>
void plane_group(const u64* qwords, sz q0, const u8* panel, sz n, sz words, u8* dist, sz ld,
                 const RowBlocks& rb) {
  constexpr sz kStride = 8 * kDenseMaxWords;
  const sz nw = W > 0 ? static_cast<sz>(W) : words;
  const sz planes = 8 * nw;
  // Each query byte repeated through a word: the XOR's embedded-broadcast operand, so the
  // G * planes query bytes take no registers and no byte broadcast (a shuffle-port
  // operation) runs per block.
  alignas(64) u64 qb[G][kStride];
  for (int j = 0; j < G; ++j)
    for (sz p = 0; p < planes; ++p)
      qb[j][p] = (qwords[(q0 + j) * nw + p / 8] >> (8 * (p % 8)) & 0xFF) * 0x0101010101010101ull;
  const __m512i t = _mm512_set1_epi8(static_cast<char>(rb.t));
  const __m512i top = _mm512_set1_epi8(static_cast<char>(kByteDistanceMax));
  u32 listed[G] = {};
  u32* blocks[G];
  for (int j = 0; j < G; ++j) blocks[j] = rb.blocks + (q0 + j) * (ld / kDistBlock);
  for (sz i = 0; i < n; i += kDistBlock) {
    const u8* block = panel + i * planes;
    const u64* qp = &qb[0][0];
    // Hidden, the query words stay memory operands; the compiler would otherwise hoist
    // their broadcasts into more registers than there are, and spill them.
    __asm__("" : "+r"(qp));
    __m512i acc[G];
    {
      const __m512i c = _mm512_loadu_si512(block);
      for (int j = 0; j < G; ++j)
        acc[j] = _mm512_popcnt_epi8(
            _mm512_xor_si512(c, _mm512_set1_epi64(static_cast<long long>(qp[j * kStride]))));
    }
#pragma GCC unroll 32
    for (sz p = 1; p < planes; ++p) {
      const __m512i c = _mm512_loadu_si512(block + 64 * p);
      for (int j = 0; j < G; ++j)
        acc[j] = _mm512_adds_epu8(
            acc[j], _mm512_popcnt_epi8(_mm512_xor_si512(
                        c, _mm512_set1_epi64(static_cast<long long>(qp[j * kStride + p])))));
    }
    if (n - i < kDistBlock) {
      const __mmask64 in = ~0ull >> (kDistBlock - (n - i));
      for (int j = 0; j < G; ++j) acc[j] = _mm512_mask_blend_epi8(in, top, acc[j]);
    }
    for (int j = 0; j < G; ++j) {
      _mm512_storeu_si512(dist + (q0 + j) * ld + i, acc[j]);
      // Listed without a branch, as in hamming_u8_count_avx512.
      blocks[j][listed[j]] = static_cast<u32>(i);
      listed[j] += _mm512_cmple_epu8_mask(acc[j], t) != 0;
    }
  }
  for (int j = 0; j < G; ++j) rb.listed[q0 + j] = listed[j];
}

template <int W>
void dist_planes(const u64* qwords, sz nq, const u8* panel, sz n, sz words, u8* dist, sz ld,
                 const RowBlocks& rb) {
  constexpr int G = 4;
  sz q = 0;
  for (; q + G <= nq; q += G) plane_group<G, W>(qwords, q, panel, n, words, dist, ld, rb);
  for (; q < nq; ++q) plane_group<1, W>(qwords, q, panel, n, words, dist, ld, rb);
}

template <int W>
sz scan_packed(const u64* qwords, sz nq, const u64* panel, sz n, sz words, const u32* thresh,
               HammingHit* hits) {
  HammingHit* out = hits;
  sz q = 0;
  for (; q + 8 <= nq; q += 8) out = packed_group<8, W>(qwords, q, panel, n, words, thresh, out);
  for (; q + 4 <= nq; q += 4) out = packed_group<4, W>(qwords, q, panel, n, words, thresh, out);
  for (; q < nq; ++q) out = packed_group<1, W>(qwords, q, panel, n, words, thresh, out);
  return static_cast<sz>(out - hits);
}

// Transposes 8 rows of 8 words in place: afterwards r[j] holds word j of rows 0..7.
inline void transpose8(__m512i* r) {
  alignas(64) static constexpr long long kLow[8] = {0, 1, 8, 9, 4, 5, 12, 13};
  alignas(64) static constexpr long long kHigh[8] = {2, 3, 10, 11, 6, 7, 14, 15};
  const __m512i lo = _mm512_load_si512(kLow), hi = _mm512_load_si512(kHigh);
  // Pairs of rows: even words, then odd words, of rows 2p and 2p + 1, interleaved.
  __m512i e[4], o[4];
  for (int p = 0; p < 4; ++p) {
    e[p] = _mm512_unpacklo_epi64(r[2 * p], r[2 * p + 1]);
    o[p] = _mm512_unpackhi_epi64(r[2 * p], r[2 * p + 1]);
  }
  // Quads of rows: words (0, 4), (2, 6), (1, 5), (3, 7) of rows 4h..4h+3.
  __m512i q[2][4];
  for (int h = 0; h < 2; ++h) {
    q[h][0] = _mm512_permutex2var_epi64(e[2 * h], lo, e[2 * h + 1]);
    q[h][1] = _mm512_permutex2var_epi64(e[2 * h], hi, e[2 * h + 1]);
    q[h][2] = _mm512_permutex2var_epi64(o[2 * h], lo, o[2 * h + 1]);
    q[h][3] = _mm512_permutex2var_epi64(o[2 * h], hi, o[2 * h + 1]);
  }
  constexpr int kFirst = 0x44, kSecond = 0xEE;  // 128-bit chunks 0, 1 or 2, 3 of each
  constexpr int kWord[4] = {0, 2, 1, 3};
  for (int t = 0; t < 4; ++t) {
    r[kWord[t]] = _mm512_shuffle_i64x2(q[0][t], q[1][t], kFirst);
    r[kWord[t] + 4] = _mm512_shuffle_i64x2(q[0][t], q[1][t], kSecond);
  }
}

// Packs the full groups of codes of W whole words (W <= 4): a group's 8 codes are W
// registers back to back, word j of code l at lane l * W + j, and each output register
// gathers its lanes with one two-register permute per pair of registers. Returns the
// number of groups packed.
template <int W>
sz pack_whole_words(const u8* codes, sz n, u64* panel) {
  constexpr int kPairs = (W + 1) / 2;
  __m512i index[W];
  __mmask8 pair_lanes[W][kPairs] = {};
  for (int j = 0; j < W; ++j) {
    alignas(64) long long lanes[8];
    for (int l = 0; l < 8; ++l) {
      const int flat = l * W + j;
      lanes[l] = flat % 16;
      pair_lanes[j][flat / 16] = static_cast<__mmask8>(pair_lanes[j][flat / 16] | (1u << l));
    }
    index[j] = _mm512_load_si512(lanes);
  }
  const sz groups = n / 8;
  for (sz g = 0; g < groups; ++g) {
    const u8* src = codes + g * 64 * W;
    __m512i r[2 * kPairs];
    for (int v = 0; v < 2 * kPairs; ++v)
      r[v] = v < W ? _mm512_loadu_si512(src + 64 * v) : _mm512_setzero_si512();
    for (int j = 0; j < W; ++j) {
      __m512i out = _mm512_maskz_permutex2var_epi64(pair_lanes[j][0], r[0], index[j], r[1]);
      for (int p = 1; p < kPairs; ++p)
        out = _mm512_or_si512(out, _mm512_maskz_permutex2var_epi64(pair_lanes[j][p], r[2 * p],
                                                                   index[j], r[2 * p + 1]));
      _mm512_storeu_si512(panel + (g * W + j) * 8, out);
    }
  }
  return groups;
}

}  // namespace

void hamming_b8_pack_avx512(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                            std::uint64_t* panel) {
  // Narrow codes of whole words are gathered by permutes; other codes' next 64 bytes
  // each make an 8 x 8 block of words, transposed in registers (a third of the
  // instructions of moving the words one by one, but wasted on a block of 2 words).
  // Masked byte loads zero the bytes past a code's end and the codes past n.
  const sz words = (nbytes + 7) / 8;
  sz done = 0;
  switch (nbytes) {
    case 8: done = pack_whole_words<1>(codes, n, panel); break;
    case 16: done = pack_whole_words<2>(codes, n, panel); break;
    case 24: done = pack_whole_words<3>(codes, n, panel); break;
    case 32: done = pack_whole_words<4>(codes, n, panel); break;
    default: break;
  }
  for (sz g = done; g * 8 < n; ++g) {
    const sz rows = n - 8 * g < 8 ? n - 8 * g : 8;
    u64* out = panel + g * words * 8;
    for (sz b = 0; 64 * b < nbytes; ++b) {
      const sz left = nbytes - 64 * b;
      const __mmask64 m = left >= 64 ? ~0ull : (~0ull >> (64 - left));
      __m512i r[8];
      for (sz l = 0; l < 8; ++l)
        r[l] = l < rows ? _mm512_maskz_loadu_epi8(m, codes + (8 * g + l) * nbytes + 64 * b)
                        : _mm512_setzero_si512();
      transpose8(r);
      // Constant register indices (the compiler unrolls this): indexed by a run-time
      // count, the registers went through the stack and a string copy.
      const sz wb = words - 8 * b < 8 ? words - 8 * b : 8;
      for (int j = 0; j < 8; ++j)
        if (static_cast<sz>(j) < wb) _mm512_storeu_si512(out + (8 * b + j) * 8, r[j]);
    }
  }
}

std::size_t hamming_b8_scan_avx512(const std::uint8_t* queries, std::size_t nq,
                                   const std::uint8_t* codes, std::size_t n,
                                   std::size_t nbytes, const std::uint32_t* thresh,
                                   HammingHit* hits) {
  switch (nbytes) {
    case 8: return scan_narrow<1>(queries, nq, codes, n, thresh, hits);
    case 16: return scan_narrow<2>(queries, nq, codes, n, thresh, hits);
    case 32: return scan_narrow<4>(queries, nq, codes, n, thresh, hits);
    case 64: return scan_wide<1>(queries, nq, codes, n, nbytes, thresh, hits);
    case 128: return scan_wide<2>(queries, nq, codes, n, nbytes, thresh, hits);
    default:
      if (nbytes < 64) return scan_wide<1>(queries, nq, codes, n, nbytes, thresh, hits);
      return scan_wide<0>(queries, nq, codes, n, nbytes, thresh, hits);
  }
}

std::size_t hamming_b8_scan_packed_avx512(const std::uint64_t* qwords, std::size_t nq,
                                          const std::uint64_t* panel, std::size_t n,
                                          std::size_t words, const std::uint32_t* thresh,
                                          HammingHit* hits) {
  // Up to six words the group unrolls (the 320-bit case 7% faster than the loop, the
  // 384-bit 3%); at 7 and 8 words the unrolled body spilled and ran slower than the
  // two-word loop.
  switch (words) {
    case 1: return scan_packed<1>(qwords, nq, panel, n, words, thresh, hits);
    case 2: return scan_packed<2>(qwords, nq, panel, n, words, thresh, hits);
    case 3: return scan_packed<3>(qwords, nq, panel, n, words, thresh, hits);
    case 4: return scan_packed<4>(qwords, nq, panel, n, words, thresh, hits);
    case 5: return scan_packed<5>(qwords, nq, panel, n, words, thresh, hits);
    case 6: return scan_packed<6>(qwords, nq, panel, n, words, thresh, hits);
    default: return scan_packed<0>(qwords, nq, panel, n, words, thresh, hits);
  }
}

void hamming_b8_dist_packed_avx512(const std::uint64_t* qwords, std::size_t nq,
                                   const std::uint64_t* panel, std::size_t n, std::size_t words,
                                   std::uint8_t* dist, std::size_t ld, const RowBlocks& rb) {
  // Byte planes, read as bytes (a char type may alias the words).
  const auto* planes = reinterpret_cast<const u8*>(panel);
  switch (words) {
    case 1: return dist_planes<1>(qwords, nq, planes, n, words, dist, ld, rb);
    case 2: return dist_planes<2>(qwords, nq, planes, n, words, dist, ld, rb);
    case 3: return dist_planes<3>(qwords, nq, planes, n, words, dist, ld, rb);
    case 4: return dist_planes<4>(qwords, nq, planes, n, words, dist, ld, rb);
    default: return dist_planes<0>(qwords, nq, planes, n, words, dist, ld, rb);
  }
}

std::size_t hamming_u8_count_avx512(const std::uint8_t* d, const std::uint32_t* from,
                                    std::size_t nfrom, const std::uint8_t* t,
                                    std::uint32_t* counts, std::uint32_t* blocks) {
  static_assert(kCountSpan == 4, "one register and one counter per threshold");
  const __m512i t0 = _mm512_set1_epi8(static_cast<char>(t[0])),
                t1 = _mm512_set1_epi8(static_cast<char>(t[1])),
                t2 = _mm512_set1_epi8(static_cast<char>(t[2])),
                t3 = _mm512_set1_epi8(static_cast<char>(t[3]));
  // Named counters: with an array of them, the compiler stored every counter every step.
  u64 c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  sz nb = 0;
  for (sz b = 0; b < nfrom; ++b) {
    const u32 i = from[b];
    const __m512i v = _mm512_loadu_si512(d + i);
    c0 += static_cast<u64>(__builtin_popcountll(_mm512_cmple_epu8_mask(v, t0)));
    c1 += static_cast<u64>(__builtin_popcountll(_mm512_cmple_epu8_mask(v, t1)));
    c2 += static_cast<u64>(__builtin_popcountll(_mm512_cmple_epu8_mask(v, t2)));
    const u64 top = _mm512_cmple_epu8_mask(v, t3);
    c3 += static_cast<u64>(__builtin_popcountll(top));
    // A row's few bytes at or below the thresholds lie in a few blocks at random: a
    // branch per block on whether it holds any mispredicted about once per hit, which
    // cost more than the rest of the selection. The list is written without one.
    blocks[nb] = i;
    nb += top != 0;
  }
  counts[0] = static_cast<u32>(c0);
  counts[1] = static_cast<u32>(c1);
  counts[2] = static_cast<u32>(c2);
  counts[3] = static_cast<u32>(c3);
  return nb;
}

std::size_t hamming_u8_collect_avx512(const std::uint8_t* d, const std::uint32_t* blocks,
                                      std::size_t nb, std::uint8_t t, std::size_t ties,
                                      std::uint32_t* lt, std::uint32_t* eq) {
  u32* const first = lt;
  const __m512i tv = _mm512_set1_epi8(static_cast<char>(t));
  for (sz b = 0; b < nb; ++b) {
    const sz i = blocks[b];
    const __m512i v = _mm512_loadu_si512(d + i);
    const u64 same = _mm512_cmpeq_epu8_mask(v, tv);
    u64 m = _mm512_cmplt_epu8_mask(v, tv);
    // Two positions unconditionally (past the last one, into the slack kernels.h grants,
    // or overwritten by the next), the rest in a loop: a block holds one or two.
    for (int r = 0; r < 2; ++r) {
      *lt = static_cast<u32>(i + static_cast<sz>(__builtin_ctzll(m | (1ull << 63))));
      lt += m != 0;
      m &= m - 1;
    }
    for (; m; m &= m - 1) *lt++ = static_cast<u32>(i + static_cast<sz>(__builtin_ctzll(m)));
    for (u64 e = ties ? same : 0; e && ties; e &= e - 1, --ties)
      *eq++ = static_cast<u32>(i + static_cast<sz>(__builtin_ctzll(e)));
  }
  return static_cast<sz>(lt - first);
}

}  // namespace cofisearch
