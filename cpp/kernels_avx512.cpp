// AVX-512 kernels (F, BW, DQ, VL and VPOPCNTDQ), compiled only in this translation unit.
//
// Hamming: VPOPCNTQ counts bits per 64-bit lane, so a 512-bit register holds 8 codes of
// 64 bits, 4 of 128, 2 of 256 or a part of one longer code. Summing lanes per code one
// register at a time (a horizontal reduction per code) is what made long codes slow in
// earlier engines; here the lane sums of several registers are folded together with
// unpack/shuffle adds, so 8 codes come out in one register whatever the width, and one
// unsigned compare against the threshold rejects all 8. The fold permutes codes within
// the register; the kPerm tables map lanes back. Each loaded code register is reused by
// a group of queries held in registers. Tails use masked loads; widths without a
// specialised path (any multiple of 8 bits) fall back to a per-code loop.
//
// Inner product: rows in lanes, one FMA chain per score along the dimension (see the
// section below). Batches read a panel that the driver packs once per block and run a
// 12-query x 32-row micro-kernel on it, GEMM style; 2-8 queries transpose 16 rows at a
// time as they read them; a lone query screens rows as stored and gives the chain only
// to rows near its threshold. Every tile ends with the threshold compare.
#include <immintrin.h>

#include <cmath>
#include <type_traits>

#include "kernels.h"

namespace cofisearch {
namespace avx512 {
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

// Widths that are a multiple of 64 bytes: each code spans `words` registers, whose
// popcounts are summed per code before the 8-code fold. M > 0 fixes the count at compile
// time (so the query registers stay in registers); M == 0 reads it at run time.
template <int M>
sz scan_wide(const u8* queries, sz nq, const u8* codes, sz n, sz nbytes, const u32* thresh,
             HammingHit* hits) {
  const sz regs = M > 0 ? static_cast<sz>(M) : nbytes / 64;
  HammingHit* out = hits;
  for (sz q = 0; q < nq; ++q) {
    const u8* qp = queries + q * nbytes;
    const __m512i tv = _mm512_set1_epi64(static_cast<long long>(thresh[q]));
    for (sz i = 0; i < n; i += 8) {
      const sz rem = n - i < 8 ? n - i : 8;
      __m512i p[8];
      for (sz c = 0; c < 8; ++c) {
        // Missing codes of a tail group repeat the last one and are masked out below.
        const u8* cp = codes + (i + (c < rem ? c : rem - 1)) * nbytes;
        __m512i acc = popxor(_mm512_loadu_si512(cp), _mm512_loadu_si512(qp));
        for (sz r = 1; r < regs; ++r)
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

// Any other multiple of 8 bits: 64-byte steps with a masked byte load for the tail.
sz scan_any(const u8* queries, sz nq, const u8* codes, sz n, sz nbytes, const u32* thresh,
            HammingHit* hits) {
  HammingHit* out = hits;
  const sz full = nbytes / 64;
  const sz tail = nbytes % 64;
  const __mmask64 tail_mask = tail ? (~0ull >> (64 - tail)) : 0;
  for (sz q = 0; q < nq; ++q) {
    const u8* qp = queries + q * nbytes;
    for (sz i = 0; i < n; ++i) {
      const u8* cp = codes + i * nbytes;
      __m512i acc = _mm512_setzero_si512();
      for (sz r = 0; r < full; ++r)
        acc = _mm512_add_epi64(acc, popxor(_mm512_loadu_si512(cp + 64 * r),
                                           _mm512_loadu_si512(qp + 64 * r)));
      if (tail)
        acc = _mm512_add_epi64(acc, popxor(_mm512_maskz_loadu_epi8(tail_mask, cp + 64 * full),
                                           _mm512_maskz_loadu_epi8(tail_mask, qp + 64 * full)));
      const u32 d = static_cast<u32>(_mm512_reduce_add_epi64(acc));
      if (d < thresh[q]) *out++ = {static_cast<u32>(q), static_cast<u32>(i), d};
    }
  }
  return static_cast<sz>(out - hits);
}

sz hamming_scan(const u8* queries, sz nq, const u8* codes, sz n, sz nbytes,
                const u32* thresh, HammingHit* hits) {
  switch (nbytes) {
    case 8: return scan_narrow<1>(queries, nq, codes, n, thresh, hits);
    case 16: return scan_narrow<2>(queries, nq, codes, n, thresh, hits);
    case 32: return scan_narrow<4>(queries, nq, codes, n, thresh, hits);
    case 64: return scan_wide<1>(queries, nq, codes, n, nbytes, thresh, hits);
    case 128: return scan_wide<2>(queries, nq, codes, n, nbytes, thresh, hits);
    default:
      if (nbytes % 64 == 0) return scan_wide<0>(queries, nq, codes, n, nbytes, thresh, hits);
      return scan_any(queries, nq, codes, n, nbytes, thresh, hits);
  }
}

// ---- inner product -------------------------------------------------------------------
//
// Every score is one FMA chain along the dimension, in index order, starting from zero,
// and one lane carries one (query, row) pair. The kernels differ only in how 16 rows'
// values at one dimension reach a register (transposed on the fly, or read from a panel
// packed once per block), never in the arithmetic: a batch, a lone query and the rerank
// give the same bits for the same pair, so the cascade at full depth equals exhaustive
// search. With rows in lanes a tile also ends with its scores ready to compare, without
// the horizontal reduction per score that a dimension-in-lanes layout pays.

constexpr sz kPanel = kPanelRows;  // rows per packed strip: two registers per dimension

// In: v[i] holds 16 consecutive dimensions of row i. Out: v[t] holds dimension t of rows
// 0..15.
inline void transpose16(__m512* v) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // v[4i + k] now holds, in 128-bit chunk c, dimension 4c + k of rows 4i..4i+3.
  for (int k = 0; k < 4; ++k) {
    const __m512 lo01 = _mm512_shuffle_f32x4(v[k], v[4 + k], 0x44);
    const __m512 hi01 = _mm512_shuffle_f32x4(v[k], v[4 + k], 0xEE);
    const __m512 lo23 = _mm512_shuffle_f32x4(v[8 + k], v[12 + k], 0x44);
    const __m512 hi23 = _mm512_shuffle_f32x4(v[8 + k], v[12 + k], 0xEE);
    t[k] = _mm512_shuffle_f32x4(lo01, lo23, kShuffleEven);
    t[4 + k] = _mm512_shuffle_f32x4(lo01, lo23, kShuffleOdd);
    t[8 + k] = _mm512_shuffle_f32x4(hi01, hi23, kShuffleEven);
    t[12 + k] = _mm512_shuffle_f32x4(hi01, hi23, kShuffleOdd);
  }
  for (int i = 0; i < 16; ++i) v[i] = t[i];
}

// Dimensions [j, j + len) of rows r[0..15], one dimension per register (len <= 16). The
// rows in `next` are requested at the same offset: scans walk 16 rows side by side, more
// streams than the hardware prefetcher follows.
inline void load_columns(const float* const* r, const float* const* next, sz j, sz len,
                         __m512* v) {
  const __mmask16 m = static_cast<__mmask16>((1u << len) - 1);
  for (int i = 0; i < 16; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(next[i] + j), _MM_HINT_T0);
    v[i] = _mm512_maskz_loadu_ps(m, r[i] + j);
  }
  transpose16(v);
}

// Scores of MR queries with the 16 rows r, read straight from memory (a lone query or a
// few: packing would cost more than it saves).
template <int MR>
inline void stream_tile(const float* const* q, const float* const* r, const float* const* next,
                        sz dim, __m512* acc) {
  for (int a = 0; a < MR; ++a) acc[a] = _mm512_setzero_ps();
  __m512 v[16];
  sz j = 0;
  for (; j + 16 <= dim; j += 16) {
    load_columns(r, next, j, 16, v);
    for (int a = 0; a < MR; ++a)
      for (int t = 0; t < 16; ++t)
        acc[a] = _mm512_fmadd_ps(_mm512_set1_ps(q[a][j + t]), v[t], acc[a]);
  }
  if (j < dim) {
    const sz len = dim - j;
    load_columns(r, next, j, len, v);
    for (int a = 0; a < MR; ++a)
      for (sz t = 0; t < len; ++t)
        acc[a] = _mm512_fmadd_ps(_mm512_set1_ps(q[a][j + t]), v[t], acc[a]);
  }
}

// Appends the pairs of `scores` (lane l: row row0 + l, lanes in `valid` only) that beat
// the query's threshold.
inline ScoreHit* emit_scores(u32 query, sz row0, const __m512* scores, int regs, float thresh,
                             u32 valid, ScoreHit* out) {
  const __m512 t = _mm512_set1_ps(thresh);
  u32 m = 0;
  for (int g = 0; g < regs; ++g)
    m |= static_cast<u32>(_mm512_cmp_ps_mask(scores[g], t, _CMP_NLE_UQ)) << (16 * g);
  m &= valid;
  if (!m) return out;
  alignas(64) float sc[32];
  for (int g = 0; g < regs; ++g) _mm512_store_ps(sc + 16 * g, scores[g]);
  while (m) {
    const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
    *out++ = {query, static_cast<u32>(row0 + l), sc[l]};
    m &= m - 1;
  }
  return out;
}

inline u32 first_lanes(sz count) { return count >= 32 ? ~0u : (1u << count) - 1; }

// Rows i..i+N-1 of a block of n, and the N after them (for prefetching), each clamped to
// the last row: a tile past the end repeats it, and its lanes are masked out.
template <sz N>
inline void tile_rows(const float* rows, sz i, sz n, sz dim, const float** r, const float** next) {
  for (sz k = 0; k < N; ++k) {
    r[k] = rows + (i + k < n ? i + k : n - 1) * dim;
    next[k] = rows + (i + N + k < n ? i + N + k : n - 1) * dim;
  }
}

template <int MR>
ScoreHit* stream_group(const float* queries, sz q0, const float* rows, sz n, sz dim,
                       const float* thresh, ScoreHit* out) {
  const float* q[MR];
  for (int a = 0; a < MR; ++a) q[a] = queries + (q0 + a) * dim;
  for (sz i = 0; i < n; i += 16) {
    const float* r[16];
    const float* next[16];
    tile_rows<16>(rows, i, n, dim, r, next);
    __m512 acc[MR];
    stream_tile<MR>(q, r, next, dim, acc);
    for (int a = 0; a < MR; ++a)
      out = emit_scores(static_cast<u32>(q0 + a), i, acc + a, 1, thresh[q0 + a],
                        first_lanes(n - i), out);
  }
  return out;
}

// Calls f(std::integral_constant<int, rest>{}) for 0 < rest <= M, so that a remainder known
// only at run time gets the tile compiled for its size; returns `out` when rest is 0.
template <int M, class F>
ScoreHit* for_remainder(sz rest, ScoreHit* out, F&& f) {
  if constexpr (M == 0) {
    return out;
  } else {
    if (rest == M) return f(std::integral_constant<int, M>{});
    return for_remainder<M - 1>(rest, out, f);
  }
}

// Runs group(q0, std::integral_constant<int, size>{}, out) over queries [0, nq) in groups
// of M, the last one smaller; returns the end of the hits written.
template <int M, class Group>
ScoreHit* in_query_groups(sz nq, ScoreHit* out, Group&& group) {
  sz q = 0;
  for (; q + M <= nq; q += M) out = group(q, std::integral_constant<int, M>{}, out);
  return for_remainder<M - 1>(nq - q, out, [&](auto mr) { return group(q, mr, out); });
}

// Eight queries per pass keep the accumulators, the 16 transposed registers and the
// transpose's temporaries within the register file.
constexpr sz kStreamQueries = 8;

inline __m512 fold_pairs_ps(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
}

inline __m512 fold_quads_ps(__m512 a, __m512 b) {
  const __m512d x = _mm512_castps_pd(a), y = _mm512_castps_pd(b);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
}

inline __m512 fold_chunks_ps(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, kShuffleEven),
                       _mm512_shuffle_f32x4(a, b, kShuffleOdd));
}

// Lane l: the sum of the lanes of a[l].
inline __m512 reduce16_ps(const __m512* a) {
  const __m512 u0 = fold_quads_ps(fold_pairs_ps(a[0], a[1]), fold_pairs_ps(a[2], a[3]));
  const __m512 u1 = fold_quads_ps(fold_pairs_ps(a[4], a[5]), fold_pairs_ps(a[6], a[7]));
  const __m512 u2 = fold_quads_ps(fold_pairs_ps(a[8], a[9]), fold_pairs_ps(a[10], a[11]));
  const __m512 u3 = fold_quads_ps(fold_pairs_ps(a[12], a[13]), fold_pairs_ps(a[14], a[15]));
  return fold_chunks_ps(fold_chunks_ps(u0, u1), fold_chunks_ps(u2, u3));
}

// A lone query is bound by memory, and transposing rows on the fly (the price of the
// chain arithmetic) costs more per byte than memory delivers (26 GB/s against 36 for
// rows read as stored). So it screens rows with dimension-in-lanes sums, which need no
// transpose, and a bound on how far such a sum can be from the chain's: both sum the same
// products, with rounding errors of at most gamma_d and gamma_(d/16+5) times
// sum |q_j r_j| <= |q| |r| (Cauchy-Schwarz), taken four times over for margin, plus a
// subnormal floor. Only rows whose screened score comes within that bound of the
// threshold get the exact chain, so the results are the chain arithmetic's, at close to
// streaming speed (the norm costs one more FMA per element: 30-32 GB/s).
struct ScreenBound {
  float relative;
  float absolute;
};

inline ScreenBound screen_bound(sz dim) {
  const float roundings = static_cast<float>(dim + dim / 16 + 5);
  return {4.0f * roundings * 0x1p-24f, 4.0f * roundings * 0x1p-149f};
}

// Rows i..i+7 of one query: lanes 0..7 the dimension-in-lanes scores, lanes 8..15 (with
// kRowNorms) the rows' squared norms. Without them the loop is one load and one FMA per
// element, like the plain scans; the norms cost a further FMA and about 15%.
template <bool kRowNorms>
inline __m512 screen_tile(const float* q, const float* const* r,
                          [[maybe_unused]] const float* const* next, sz dim) {
  __m512 acc[16];
  for (int l = 0; l < 16; ++l) acc[l] = _mm512_setzero_ps();
  sz j = 0;
  auto step = [&](__m512 qv, auto load) {
    for (int l = 0; l < 8; ++l) {
      // Measured: the prefetch pays only when the norms make the loop longer (+10%); on
      // the bare loop it costs 10%.
      if constexpr (kRowNorms) _mm_prefetch(reinterpret_cast<const char*>(next[l] + j), _MM_HINT_T0);
      const __m512 rv = load(r[l]);
      acc[l] = _mm512_fmadd_ps(qv, rv, acc[l]);
      if constexpr (kRowNorms) acc[8 + l] = _mm512_fmadd_ps(rv, rv, acc[8 + l]);
    }
  };
  for (; j + 16 <= dim; j += 16)
    step(_mm512_loadu_ps(q + j), [&j](const float* p) { return _mm512_loadu_ps(p + j); });
  if (j < dim) {
    const __mmask16 m = static_cast<__mmask16>(first_lanes(dim - j));
    step(_mm512_maskz_loadu_ps(m, q + j),
         [&j, m](const float* p) { return _mm512_maskz_loadu_ps(m, p + j); });
  }
  return reduce16_ps(acc);
}

// Exact chain scores of one query for the rows listed in `cand` (from `from` to `to`),
// keeping those that beat the threshold; compacts them in place.
ScoreHit* confirm(const float* q, const float* rows, sz dim, float thresh, ScoreHit* from,
                  ScoreHit* to) {
  ScoreHit* out = from;
  const sz m = static_cast<sz>(to - from);
  const float* qp[1] = {q};
  auto row = [&](sz j) { return rows + static_cast<sz>(from[j < m ? j : m - 1].row) * dim; };
  for (sz i = 0; i < m; i += 16) {
    const float* r[16];
    const float* next[16];
    u32 ids[16];
    for (sz j = 0; j < 16; ++j) {
      r[j] = row(i + j);
      next[j] = row(i + 16 + j);
      ids[j] = from[i + j < m ? i + j : m - 1].row;
    }
    const u32 query = from[i].query;
    __m512 acc;
    stream_tile<1>(qp, r, next, dim, &acc);
    u32 hit = _mm512_cmp_ps_mask(acc, _mm512_set1_ps(thresh), _CMP_NLE_UQ) &
              first_lanes(m - i);
    alignas(64) float sc[16];
    _mm512_store_ps(sc, acc);
    while (hit) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(hit));
      *out++ = {query, ids[l], sc[l]};
      hit &= hit - 1;
    }
  }
  return out;
}

template <bool kRowNorms>
ScoreHit* screen_query(const float* q, const float* rows, sz n, sz dim, float row_norm,
                       const float* thresh, ScoreHit* out) {
  const ScreenBound b = screen_bound(dim);
  const __m512 t = _mm512_set1_ps(thresh[0]);
  __m512 qq = _mm512_setzero_ps();
  for (sz j = 0; j < dim; j += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>(first_lanes(dim - j)), q + j);
    qq = _mm512_fmadd_ps(v, v, qq);
  }
  const float qnorm = std::sqrt(_mm512_reduce_add_ps(qq));
  const __m512 rel = _mm512_set1_ps(b.relative * qnorm), abs_floor = _mm512_set1_ps(b.absolute);
  const __m512 margin = _mm512_fmadd_ps(rel, _mm512_set1_ps(row_norm), abs_floor);
  ScoreHit* const first = out;
  for (sz i = 0; i < n; i += 8) {
    const float* r[8];
    const float* next[8];
    tile_rows<8>(rows, i, n, dim, r, next);
    const __m512 s = screen_tile<kRowNorms>(q, r, next, dim);
    __m512 reach;
    if constexpr (kRowNorms) {
      // Lanes 8..15 (the squared norms) moved under lanes 0..7.
      const __m512 norms = _mm512_sqrt_ps(_mm512_shuffle_f32x4(s, s, _MM_SHUFFLE(3, 2, 3, 2)));
      reach = _mm512_add_ps(s, _mm512_fmadd_ps(norms, rel, abs_floor));
    } else {
      reach = _mm512_add_ps(s, margin);
    }
    u32 m = _mm512_cmp_ps_mask(reach, t, _CMP_NLE_UQ) & first_lanes(n - i < 8 ? n - i : 8);
    while (m) {
      const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
      *out++ = {0, static_cast<u32>(i + l), 0.0f};
      m &= m - 1;
    }
  }
  return confirm(q, rows, dim, thresh[0], first, out);
}

sz dot_scan(const float* queries, sz nq, const float* rows, sz n, sz dim, float row_norm,
            const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  if (nq == 1) {
    out = std::isnan(row_norm) ? screen_query<true>(queries, rows, n, dim, 0.0f, thresh, out)
                               : screen_query<false>(queries, rows, n, dim, row_norm, thresh, out);
    return static_cast<sz>(out - hits);
  }
  out = in_query_groups<kStreamQueries>(nq, out, [&](sz q, auto mr, ScoreHit* o) {
    return stream_group<decltype(mr)::value>(queries, q, rows, n, dim, thresh, o);
  });
  return static_cast<sz>(out - hits);
}

// Strip s of the panel holds rows 32s..32s+31, dimension j of row 32s + i at
// [s * 32 * dim + j * 32 + i]; the last strip repeats the last row.
void dot_pack(const float* rows, sz n, sz dim, float* panel) {
  for (sz s = 0; s * kPanel < n; ++s) {
    const float* r[kPanel];
    const float* next[kPanel];
    tile_rows<kPanel>(rows, s * kPanel, n, dim, r, next);
    float* strip = panel + s * kPanel * dim;
    __m512 v[16];
    for (sz h = 0; h < 2; ++h)
      for (sz j = 0; j < dim; j += 16) {
        const sz len = dim - j < 16 ? dim - j : 16;
        load_columns(r + 16 * h, next + 16 * h, j, len, v);
        for (sz t = 0; t < len; ++t) _mm512_storeu_ps(strip + (j + t) * kPanel + 16 * h, v[t]);
      }
  }
}

// Scores of MR queries with one 32-row strip: per dimension two loads of the strip, MR
// broadcasts and 2 * MR FMAs, like a GEMM micro-kernel.
template <int MR>
inline void panel_tile(const float* const* q, const float* strip, sz dim, __m512* acc) {
  for (int a = 0; a < 2 * MR; ++a) acc[a] = _mm512_setzero_ps();
  for (sz j = 0; j < dim; ++j) {
    const __m512 p0 = _mm512_loadu_ps(strip + j * kPanel);
    const __m512 p1 = _mm512_loadu_ps(strip + j * kPanel + 16);
    for (int a = 0; a < MR; ++a) {
      const __m512 b = _mm512_set1_ps(q[a][j]);
      acc[2 * a] = _mm512_fmadd_ps(b, p0, acc[2 * a]);
      acc[2 * a + 1] = _mm512_fmadd_ps(b, p1, acc[2 * a + 1]);
    }
  }
}

template <int MR>
ScoreHit* panel_group(const float* queries, sz q0, const float* panel, sz n, sz dim,
                      const float* thresh, ScoreHit* out) {
  const float* q[MR];
  for (int a = 0; a < MR; ++a) q[a] = queries + (q0 + a) * dim;
  for (sz i = 0; i < n; i += kPanel) {
    __m512 acc[2 * MR];
    panel_tile<MR>(q, panel + i * dim, dim, acc);
    for (int a = 0; a < MR; ++a)
      out = emit_scores(static_cast<u32>(q0 + a), i, acc + 2 * a, 2, thresh[q0 + a],
                        first_lanes(n - i), out);
  }
  return out;
}

// Twelve queries: 24 accumulators, two strip registers and a broadcast fill 27 of the 32
// registers, and each strip load feeds 12 FMAs.
constexpr sz kPanelQueries = 12;

sz dot_scan_packed(const float* queries, sz nq, const float* panel, sz n, sz dim,
                   const float* thresh, ScoreHit* hits) {
  ScoreHit* out = in_query_groups<kPanelQueries>(nq, hits, [&](sz q, auto mr, ScoreHit* o) {
    return panel_group<decltype(mr)::value>(queries, q, panel, n, dim, thresh, o);
  });
  return static_cast<sz>(out - hits);
}

// ---- queries in lanes ----
//
// A batch of a few dozen queries spends most of its time packing rows (each packed row
// serves only those queries). With the queries packed instead (32 per group, once per
// search), rows are read as stored and each row value is broadcast against two registers
// of queries: per dimension two loads, 12 broadcasts and 24 FMAs, no transpose.

// Scores of one 32-query group with the 12 rows r: acc[2i], acc[2i+1] hold row i against
// queries 0-15 and 16-31.
inline void qlane_tile(const float* qp, const float* const* r, const float* const* next, sz dim,
                       __m512* acc) {
  for (int a = 0; a < 24; ++a) acc[a] = _mm512_setzero_ps();
  for (sz j = 0; j < dim; ++j) {
    // Twelve rows side by side are more streams than the hardware prefetcher follows.
    if (j % 16 == 0)
      for (int i = 0; i < 12; ++i) _mm_prefetch(reinterpret_cast<const char*>(next[i] + j), _MM_HINT_T0);
    const __m512 q0 = _mm512_loadu_ps(qp + j * kPanel);
    const __m512 q1 = _mm512_loadu_ps(qp + j * kPanel + 16);
    for (int i = 0; i < 12; ++i) {
      const __m512 b = _mm512_set1_ps(r[i][j]);
      acc[2 * i] = _mm512_fmadd_ps(b, q0, acc[2 * i]);
      acc[2 * i + 1] = _mm512_fmadd_ps(b, q1, acc[2 * i + 1]);
    }
  }
}

ScoreHit* qlane_group(const float* qp, sz q0, sz nq, const float* rows, sz n, sz dim,
                      const float* thresh, ScoreHit* out) {
  __m512 tv[2];
  __mmask16 valid[2];
  for (sz h = 0; h < 2; ++h) {
    const sz first = q0 + 16 * h;
    valid[h] = static_cast<__mmask16>(first < nq ? first_lanes(nq - first < 16 ? nq - first : 16) : 0);
    tv[h] = _mm512_maskz_loadu_ps(valid[h], thresh + (first < nq ? first : 0));
  }
  for (sz i = 0; i < n; i += 12) {
    const float* r[12];
    const float* next[12];
    tile_rows<12>(rows, i, n, dim, r, next);
    __m512 acc[24];
    qlane_tile(qp, r, next, dim, acc);
    const sz rows_here = n - i < 12 ? n - i : 12;
    // Constant indices only: an accumulator indexed at run time would keep them all in
    // memory, stored on every step of the tile.
    for (int k = 0; k < 12; ++k) {
      if (static_cast<sz>(k) >= rows_here) break;
      for (int h = 0; h < 2; ++h) {
        u32 m = _mm512_cmp_ps_mask(acc[2 * k + h], tv[h], _CMP_NLE_UQ) & valid[h];
        if (!m) continue;
        alignas(64) float sc[16];
        _mm512_store_ps(sc, acc[2 * k + h]);
        while (m) {
          const unsigned l = static_cast<unsigned>(__builtin_ctz(m));
          *out++ = {static_cast<u32>(q0 + 16 * static_cast<sz>(h) + l),
                    static_cast<u32>(i + static_cast<sz>(k)), sc[l]};
          m &= m - 1;
        }
      }
    }
  }
  return out;
}

sz dot_scan_qpanel(const float* qpanel, sz nq, const float* rows, sz n, sz dim,
                   const float* thresh, ScoreHit* hits) {
  ScoreHit* out = hits;
  for (sz q0 = 0; q0 < nq; q0 += kPanel)
    out = qlane_group(qpanel + q0 * dim, q0, nq, rows, n, dim, thresh, out);
  return static_cast<sz>(out - hits);
}

void dot_gather(const float* query, const float* base, sz dim, const std::int64_t* ids, sz m,
                float* scores) {
  const float* q[1] = {query};
  auto row = [&](sz j) { return base + static_cast<sz>(ids[j < m ? j : m - 1]) * dim; };
  for (sz i = 0; i < m; i += 16) {
    // Candidates are scattered: the next tile's rows are requested while this one runs.
    const float* r[16];
    const float* next[16];
    for (sz j = 0; j < 16; ++j) {
      r[j] = row(i + j);
      next[j] = row(i + 16 + j);
    }
    __m512 s;
    stream_tile<1>(q, r, next, dim, &s);
    const sz rem = m - i < 16 ? m - i : 16;
    _mm512_mask_storeu_ps(scores + i, static_cast<__mmask16>(first_lanes(rem)), s);
  }
}

}  // namespace

const KernelSet kernels = {hamming_scan, dot_scan,        dot_gather,
                           dot_pack,     dot_scan_packed, dot_scan_qpanel};

}  // namespace avx512
}  // namespace cofisearch
