// Kernel contract for cofisearch (layer 1 of STYLE.md).
//
// A kernel compares a small tile of queries against a block of database rows for one
// instruction set and reports every (query, row) pair that beats the caller's current
// threshold for that query. Kernels never allocate, never start threads and never keep
// state: all buffers belong to the caller, rows are packed back to back with no padding
// (row i of `codes` starts at codes + i * nbytes), and every pointer may be unaligned.
//
// Top-k bookkeeping stays out of the hot loop on purpose: the caller keeps one heap per
// query and hands the kernel the heap's current worst distance as `thresh`. Almost every
// row is then rejected by a single vector compare; the rare survivors are written to
// `hits`, which must have room for nq * n entries (the worst case, before heaps fill).
//
// Every kernel exists at every level, named <metric>_<type>_<kernel>_<isa> (hamming_b8_*
// over bytes of packed bits, dot_f32_*), each metric and instruction set in its own
// translation unit (hamming_scalar.cpp ... dot_avx512.cpp) compiled with its own flags;
// the exceptions are the packs that only move data (the float pack and the code pack at
// AVX2, the dense panels), which are the portable ones. The scalar units are the reference
// the others are tested against.
//
// What a unit compiled with ISA flags may include: <immintrin.h> and this header (which
// itself includes only <cstddef> and <cstdint>, for types), nothing else. Any inline
// function or template with external linkage instantiated there (a standard library
// helper such as std::sqrt, or one from a shared header) is emitted as a weak symbol
// compiled with those flags, and the linker may keep that copy for every unit, which then
// runs AVX-512 code on a processor without it. Helpers of such a unit live in its
// anonymous namespace (internal linkage, never merged) and use intrinsics and compiler
// builtins only; this header declares types, constants and functions, and defines no
// function. The scalar units, compiled with the baseline flags, may include what they
// like: their copies run everywhere.
//
// Floating point: at each level every inner product of a (query, row) pair is computed
// by the same arithmetic in every kernel (scan as stored, packed panels, query panel,
// gather), so a query gets the same bits alone, in any batch and in the rerank. Each dot
// unit's header says which arithmetic that is.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cofisearch {

enum class SimdLevel : int { scalar = 0, avx2 = 1, avx512 = 2 };

// Largest query tile a Hamming scan kernel accepts; the drivers never pass more.
constexpr std::size_t kMaxQueryTile = 16;

struct HammingHit {
  std::uint32_t query;     // index within the tile
  std::uint32_t row;       // index within the block
  std::uint32_t distance;
};

struct ScoreHit {
  std::uint32_t query;
  std::uint32_t row;
  float score;
};

// Emits every pair with distance < thresh[q] (Hamming distances are at most 8 * nbytes,
// so thresh = UINT32_MAX admits everything). Returns the number of hits written.
using HammingScanFn = std::size_t(const std::uint8_t* queries, std::size_t nq,
                                const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                                const std::uint32_t* thresh, HammingHit* hits);

// Codes of nbytes bytes rearranged for a batch of queries (see HammingPackFn): with
// words = ceil(nbytes / 8) 64-bit words per code, group g of 8 codes holds word j of code
// 8g + l at [(g * words + j) * 8 + l], a code's bytes past nbytes and the missing codes
// of the last group as zeros. The distance of 8 codes is then a sum over j of popcounts
// of one vector each, with no reduction across lanes: the cost is linear in the words at
// every width, where reading codes as stored pays a per-width fold.
constexpr std::size_t kCodeGroup = 8;

using HammingPackFn = void(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                           std::uint64_t* panel);

// HammingScanFn over a panel of n codes of `words` words, with the queries as words too
// (query q's word j at qwords[q * words + j], zero past the code's bytes): the same hits.
using HammingPackedScanFn = std::size_t(const std::uint64_t* qwords, std::size_t nq,
                                      const std::uint64_t* panel, std::size_t n,
                                      std::size_t words, const std::uint32_t* thresh,
                                      HammingHit* hits);

// Rows of byte distances, for many queries over a small database: the driver selects
// each query's top k from its whole row (HammingCountFn, HammingCollectFn) instead of
// admitting hits one by one against a threshold still on its way down.
//
// A row holds code i's distance, saturated at kByteDistanceMax, at byte i, and
// kByteDistanceMax in its padding up to ld = n rounded up to kDistBlock. The codes come
// as the level's dense panel (HammingDensePackFn), for ld codes of at most kDenseMaxWords
// words, in one of two layouts:
// - groups (scalar, AVX2): a panel (HammingPackFn) in which each block of 64 codes is
//   transposed: group 8b + u, lane l holds code 64b + 8l + u. A kernel then computes 8
//   registers of distances whose merge into one register with shifts (lane l of
//   register u to byte 8l + u) puts every code at its own byte, with no byte shuffle.
// - byte planes (AVX-512): with words = ceil(nbytes / 8), block b of 64 codes is 8 *
//   words planes of 64 bytes, plane j holding byte j of code 64b + l at byte l (zeros
//   past nbytes and past n): [(b * 8 * words + j) * 64 + l] as bytes. VPOPCNTB of a plane
//   XORed with the query's byte j adds up to the row's bytes directly, where the groups
//   cost a merge into bytes as dear as the popcounts.
constexpr std::size_t kDistBlock = 64;
constexpr std::uint32_t kByteDistanceMax = 255;

// The widest codes, in 64-bit words, of a dense panel: the AVX-512 kernel keeps every
// byte of its queries on its stack.
constexpr std::size_t kDenseMaxWords = 16;

// Writes the dense panel of codes [0, n) for the level's HammingDistFn: every 64-bit word
// of ceil(n / kDistBlock) * kDistBlock codes of ceil(nbytes / 8) words, padding included.
using HammingDensePackFn = void(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                                std::uint64_t* panel);

// Thresholds counted in one pass over a row.
constexpr std::size_t kCountSpan = 4;

// Where a kernel writing rows of distances also lists, for each row, the blocks of
// kDistBlock bytes that hold a byte <= t (one t for every row): row q's offsets at
// blocks + q * (ld / kDistBlock), ascending, their number at listed[q]. The count that
// follows (HammingCountFn) then reads those blocks only: a quarter of a row of 5,000
// random codes at k = 10. Listing costs the kernel a compare per block; counting there at
// four thresholds cost four, and the 64-bit 5,000 x 5,000 all-vs-all took 4.4 ms of CPU
// against 3.7 ms listing (Intel Xeon, family 6 model 106).
struct RowBlocks {
  std::uint8_t t;
  std::uint32_t* blocks;
  std::uint32_t* listed;
};

// Writes row q of nq queries (words as for HammingPackedScanFn) to dist + q * ld, and
// lists its blocks into rb. panel is the level's dense panel.
using HammingDistFn = void(const std::uint64_t* qwords, std::size_t nq,
                           const std::uint64_t* panel, std::size_t n, std::size_t words,
                           std::uint8_t* dist, std::size_t ld, const RowBlocks& rb);

// counts[j] = the number of bytes <= t[j], for j < kCountSpan, in the nfrom blocks of
// kDistBlock bytes of row d at offsets from[0, nfrom) (ascending), with t ascending and
// below kByteDistanceMax (so padding never counts): the row's counts when those blocks
// hold every byte of the row <= t[kCountSpan - 1]. Also lists, in blocks, the offsets of
// those of them that hold a byte <= t[kCountSpan - 1], and returns their number: the only
// blocks a later count or collect at that threshold or below needs to read. blocks may be
// from itself (the list then shrinks in place).
using HammingCountFn = std::size_t(const std::uint8_t* d, const std::uint32_t* from,
                                   std::size_t nfrom, const std::uint8_t* t,
                                   std::uint32_t* counts, std::uint32_t* blocks);

// Of the nb blocks of row d at offsets blocks[0, nb) (ascending), writes in ascending
// order the codes whose distance is < t to lt, and the `ties` smallest codes at distance t
// to eq (eq may be null when ties is 0); returns the number written to lt. The blocks
// hold every code below t, and every code at t when ties > 0. lt has room for
// kCollectSlack entries past the last: a kernel may write there rather than branch.
constexpr std::size_t kCollectSlack = 2;
using HammingCollectFn = std::size_t(const std::uint8_t* d, const std::uint32_t* blocks,
                                     std::size_t nb, std::uint8_t t, std::size_t ties,
                                     std::uint32_t* lt, std::uint32_t* eq);

// Emits every pair whose inner product is > thresh[q], or unordered with it: a NaN
// threshold therefore admits everything, which is how an unfilled heap is signalled.
// row_norm is an upper bound on the Euclidean norm of every row, or NaN where the caller
// does not know one; kernels may use it to bound rounding, never to change a result.
using DotScanFn = std::size_t(const float* queries, std::size_t nq, const float* rows,
                            std::size_t n, std::size_t dim, float row_norm,
                            const float* thresh, ScoreHit* hits);

// Inner product of one query with the rows base + ids[j] * dim, into scores[j]. Used by
// the rerank stage, where candidate rows are scattered over the database.
using DotGatherFn = void(const float* query, const float* base, std::size_t dim,
                       const std::int64_t* ids, std::size_t m, float* scores);

// Rows per strip of a packed panel (below), and queries per group of a query panel.
constexpr std::size_t kPanelRows = 32;

// Rearranges rows [0, n) into the panel that DotPackedScanFn reads: the rows transposed in
// strips of kPanelRows, ceil(n / kPanelRows) * kPanelRows * dim floats, dimension j of
// row 32s + i at [s * 32 * dim + j * 32 + i], the last strip padded by repeating the last
// row. Packing a block once lets a batch of queries run a GEMM-style micro-kernel on it.
using DotPackFn = void(const float* rows, std::size_t n, std::size_t dim, float* panel);

// DotScanFn over a packed block of n rows, with the same scores bit for bit.
using DotPackedScanFn = std::size_t(const float* queries, std::size_t nq, const float* panel,
                                  std::size_t n, std::size_t dim, const float* thresh,
                                  ScoreHit* hits);

// DotScanFn over a query panel, the same layout for queries (group g holds queries
// 32g..32g+31, dimension j of query 32g + l at [g * 32 * dim + j * 32 + l], missing
// queries as zeros; the driver packs it once per search), rows read as stored: for
// batches too small to repay packing the rows. Same scores bit for bit.
using DotQueryPanelScanFn = std::size_t(const float* qpanel, std::size_t nq, const float* rows,
                                      std::size_t n, std::size_t dim, const float* thresh,
                                      ScoreHit* hits);

// The distance of two codes of nbytes bytes, as the scalar scan computes it; the gather
// of scattered rows uses it too (see hamming_gather_search).
std::uint32_t hamming_b8_distance_scalar(const std::uint8_t* a, const std::uint8_t* b,
                                         std::size_t nbytes);
HammingScanFn hamming_b8_scan_scalar;
HammingPackFn hamming_b8_pack_scalar;
HammingDensePackFn hamming_b8_pack_groups_scalar;
HammingDensePackFn hamming_b8_pack_planes_scalar;
HammingPackedScanFn hamming_b8_scan_packed_scalar;
HammingDistFn hamming_b8_dist_packed_scalar;
HammingCountFn hamming_u8_count_scalar;
HammingCollectFn hamming_u8_collect_scalar;
DotScanFn dot_f32_scan_scalar;
DotGatherFn dot_f32_gather_scalar;
DotPackFn dot_f32_pack_scalar;
DotPackedScanFn dot_f32_scan_packed_scalar;
DotQueryPanelScanFn dot_f32_scan_qpanel_scalar;

#if defined(COFISEARCH_X86)
HammingScanFn hamming_b8_scan_avx2;
HammingPackedScanFn hamming_b8_scan_packed_avx2;
HammingDistFn hamming_b8_dist_packed_avx2;
HammingCountFn hamming_u8_count_avx2;
HammingCollectFn hamming_u8_collect_avx2;
DotScanFn dot_f32_scan_avx2;
DotGatherFn dot_f32_gather_avx2;
DotPackFn dot_f32_pack_avx2;
DotPackedScanFn dot_f32_scan_packed_avx2;
DotQueryPanelScanFn dot_f32_scan_qpanel_avx2;

HammingScanFn hamming_b8_scan_avx512;
HammingPackFn hamming_b8_pack_avx512;
HammingPackedScanFn hamming_b8_scan_packed_avx512;
HammingDistFn hamming_b8_dist_packed_avx512;
HammingCountFn hamming_u8_count_avx512;
HammingCollectFn hamming_u8_collect_avx512;
DotScanFn dot_f32_scan_avx512;
DotGatherFn dot_f32_gather_avx512;
DotPackFn dot_f32_pack_avx512;
DotPackedScanFn dot_f32_scan_packed_avx512;
DotQueryPanelScanFn dot_f32_scan_qpanel_avx512;
#endif

// One level's kernels, assembled by the dispatch layer (simd.cpp), which checks at
// compile time that none is missing.
struct KernelSet {
  HammingScanFn* hamming_scan;
  HammingPackFn* hamming_pack;
  HammingPackedScanFn* hamming_scan_packed;
  // The smallest batch of codes of nbytes bytes for which the driver packs blocks.
  std::size_t (*hamming_panel_min_queries)(std::size_t nbytes);
  HammingDensePackFn* hamming_dense_pack;
  HammingDistFn* hamming_dist;
  HammingCountFn* hamming_count;
  HammingCollectFn* hamming_collect;
  // The largest database of codes of nbytes bytes that a batch searches through rows of
  // byte distances (0: never at this width).
  std::size_t (*hamming_dense_max_rows)(std::size_t nbytes);
  DotScanFn* dot_scan;
  DotGatherFn* dot_gather;
  DotPackFn* dot_pack;
  DotPackedScanFn* dot_scan_packed;
  DotQueryPanelScanFn* dot_scan_qpanel;
  // The smallest batch for which the driver uses the panels at this level; smaller
  // batches read rows as stored (see DotScan::path in search.cpp).
  std::size_t dot_panel_min_queries;
};

}  // namespace cofisearch
