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
// Each instruction set lives in its own translation unit compiled with its own flags, and
// those units use nothing but intrinsics and plain loops: no inline function or template
// shared with another unit may be instantiated there, or the linker could keep the
// AVX-512 copy for everyone.
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
using HammingScanFn = std::size_t (*)(const std::uint8_t* queries, std::size_t nq,
                                      const std::uint8_t* codes, std::size_t n,
                                      std::size_t nbytes, const std::uint32_t* thresh,
                                      HammingHit* hits);

// Emits every pair whose inner product is > thresh[q], or unordered with it: a NaN
// threshold therefore admits everything, which is how an unfilled heap is signalled.
// row_norm is an upper bound on the Euclidean norm of every row, or NaN where the caller
// does not know one; kernels may use it to bound rounding, never to change a result.
using DotScanFn = std::size_t (*)(const float* queries, std::size_t nq, const float* rows,
                                  std::size_t n, std::size_t dim, float row_norm,
                                  const float* thresh, ScoreHit* hits);

// Inner product of one query with the rows base + ids[j] * dim, into scores[j]. Used by
// the rerank stage, where candidate rows are scattered over the database.
using DotGatherFn = void (*)(const float* query, const float* base, std::size_t dim,
                             const std::int64_t* ids, std::size_t m, float* scores);

// Rows per strip of a packed panel (below).
constexpr std::size_t kPanelRows = 32;

// Rearranges rows [0, n) into the panel that DotPackedScanFn reads: the rows transposed in
// strips of kPanelRows, ceil(n / kPanelRows) * kPanelRows * dim floats, the last strip
// padded by repeating the last row. Packing a block once lets a batch of queries run a
// GEMM-style micro-kernel over it.
using DotPackFn = void (*)(const float* rows, std::size_t n, std::size_t dim, float* panel);

// DotScanFn over a packed block of n rows, with the same scores bit for bit.
using DotPackedScanFn = std::size_t (*)(const float* queries, std::size_t nq,
                                        const float* panel, std::size_t n, std::size_t dim,
                                        const float* thresh, ScoreHit* hits);

// DotScanFn over a query panel, the same layout for queries (group g holds queries
// 32g..32g+31, dimension j of query 32g + l at [g * 32 * dim + j * 32 + l], missing
// queries as zeros; the driver packs it once per search), rows read as stored: for
// batches too small to repay packing the rows. Same scores bit for bit.
using DotQueryPanelScanFn = std::size_t (*)(const float* qpanel, std::size_t nq,
                                            const float* rows, std::size_t n, std::size_t dim,
                                            const float* thresh, ScoreHit* hits);

struct KernelSet {
  HammingScanFn hamming_scan;
  DotScanFn dot_scan;
  DotGatherFn dot_gather;
  // nullptr where the instruction set has no kernel for these layouts
  DotPackFn dot_pack;
  DotPackedScanFn dot_scan_packed;
  DotQueryPanelScanFn dot_scan_qpanel;
};

namespace scalar { extern const KernelSet kernels; }
#if defined(COFISEARCH_X86)
namespace avx2 { extern const KernelSet kernels; }
namespace avx512 { extern const KernelSet kernels; }
#endif

}  // namespace cofisearch
