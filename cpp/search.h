// Scan drivers (layer 4 of STYLE.md): exact top-k search over a whole database, with the
// selection fused into the scan, and the rerank of given candidates.
//
// Contract shared by every entry point:
// - the database is `n` rows packed back to back (codes of `nbytes` bytes, or float32
//   vectors of `dim`), queries likewise; nothing is copied and the queries x database
//   matrix is never formed: each thread selects for a bounded chunk of queries at a
//   time, so selection memory is O(threads x chunk x k) beside the outputs;
// - outputs are caller-owned `nq x k` arrays, each row sorted best-first (Hamming
//   ascending, score descending, ties by smaller id); rows with fewer than k results are
//   padded with id -1 and the sentinel value below;
// - `nthreads` >= 1. Many queries are split across threads in chunks; few queries on a
//   large database split the database into parts instead and merge the parts' results.
//   The threads are the process-wide pool of pool.h, and the calling thread runs a share
//   itself. Results are identical for every thread count;
// - the SIMD level is read once per call;
// - no Python here, and no exception escapes a worker thread: the first one is rethrown
//   on the calling thread after every part has finished.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels.h"

namespace cofisearch {

constexpr std::int32_t kHammingSentinel = std::numeric_limits<std::int32_t>::max();
constexpr float kScoreSentinel = -std::numeric_limits<float>::infinity();

// Which rows a search may return and the ids it returns them by (an index with the
// caller's ids, removals or an `allowed` filter). The default is every row, as its row
// number.
struct RowFilter {
  // Bit r % 64 of word r / 64 set: row r may be returned. Null: every row. Checked in the
  // scan's hit path, before a hit reaches the selector, so the top k are the k best
  // allowed rows.
  const std::uint64_t* allow = nullptr;
  // Row r is returned as ids[r] (ties then go to the smaller of these ids). Null: as r.
  const std::int64_t* ids = nullptr;
  // The ids increase with the row, so ties by id are ties by row and every path keeps
  // its order; otherwise the scan admits ties at the k-th value for the selector to
  // order by id.
  bool ids_ascending = true;
};

void hamming_search(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                    const std::uint8_t* queries, std::size_t nq, std::size_t k, int nthreads,
                    std::int32_t* distances, std::int64_t* ids, const RowFilter& filter = {});

// row_norm: an upper bound on the norm of every row (the index keeps one), or NaN.
void dot_search(const float* rows, std::size_t n, std::size_t dim, float row_norm,
                const float* queries, std::size_t nq, std::size_t k, int nthreads, float* scores,
                std::int64_t* ids, const RowFilter& filter = {});

// dot_search over rows already packed by the level's dot_pack (kernels.h, DotPackFn;
// ceil(n / kPanelRows) * kPanelRows * dim floats), for a small database kept packed and
// searched for a large share of its rows. Every score is computed (the same bits as
// dot_search) and each query's top k selected from its whole row, where dot_search's
// admissions against a threshold still on its way down, and a lone query's screen and
// confirm, cost more than the scores. No filter; the rest of the contract as above.
void dot_pack(const float* rows, std::size_t n, std::size_t dim, float* panel);
void dot_search_packed(const float* panel, std::size_t n, std::size_t dim, const float* queries,
                       std::size_t nq, std::size_t k, int nthreads, float* scores,
                       std::int64_t* ids);

// The top k of nq queries over a small database held both as rows and packed (an IVF's
// centroids): dot_search_packed where k is a large share of n, dot_search (with
// row_norm) otherwise. The same results either way.
void dot_route(const float* rows, const float* panel, std::size_t n, std::size_t dim,
               float row_norm, const float* queries, std::size_t nq, std::size_t k, int nthreads,
               float* scores, std::int64_t* ids);

// Every score of nq queries over the n rows of a dot_pack panel, in row order: out[q * n
// + r] is query q's inner product with row r, the same bits as dot_search's (the linear
// maps of a search, such as the asymmetric screen's rotation, computed as one).
void dot_scores_packed(const float* panel, std::size_t n, std::size_t dim, const float* queries,
                       std::size_t nq, int nthreads, float* out);

// The top k of every query among the m rows listed in `rows` (shared by all queries,
// each a row of the database; the caller checks), returned as ids[row] (or the row when
// ids is null), ties by the smaller id: the path of a very selective filter, O(nq * m)
// whatever the database size.
void hamming_gather_search(const std::uint8_t* codes, std::size_t nbytes,
                           const std::uint8_t* queries, std::size_t nq, const std::int64_t* rows,
                           std::size_t m, std::size_t k, int nthreads, std::int32_t* distances,
                           std::int64_t* out_ids, const std::int64_t* ids);
void dot_gather_search(const float* db, std::size_t dim, const float* queries, std::size_t nq,
                       const std::int64_t* rows, std::size_t m, std::size_t k, int nthreads,
                       float* scores, std::int64_t* out_ids, const std::int64_t* ids);

// Scores, for each query, only the database rows listed in its row of `candidates`
// (nq x c ids; -1 entries are skipped, duplicates count once). Every id must be -1 or a
// row of `rows`: the caller checks. Cost O(nq * c * dim).
void dot_rerank(const float* rows, std::size_t dim, const float* queries, std::size_t nq,
                const std::int64_t* candidates, std::size_t c, std::size_t k, int nthreads,
                float* scores, std::int64_t* ids);

// ---- geometry and paths, for tests --------------------------------------------------
//
// What the drivers above decide, computed by the code they use, so that tests can place
// sizes on the real edges and reach every kernel at every level.

enum class ScanKind { hamming, dot };

// Rows per full cache block of a scan of nq queries over rows of row_bytes.
std::size_t scan_block_rows(ScanKind kind, std::size_t row_bytes, std::size_t nq);

// The row count of each block, in order, that one thread's scan of rows [0, n) visits:
// blocks double from 64 rows up to scan_block_rows, the last one cut at n.
std::vector<std::size_t> scan_blocks(ScanKind kind, std::size_t row_bytes, std::size_t nq,
                                     std::size_t n);

// Which kernel dot_search runs for a batch of nq queries at the current SIMD level: rows
// as stored (dot_scan), a query panel (dot_scan_qpanel) or packed rows (dot_scan_packed).
enum class DotPath { automatic, stream, query_panel, row_panel };
DotPath dot_path(std::size_t nq);

// Makes dot_search take `path` whatever the batch size (DotPath::automatic restores the
// choice by size). For tests only: it applies to every search of the process.
void force_dot_path(DotPath path);

// Which kernel hamming_search runs for nq queries over n codes of nbytes bytes at the
// current level: codes as stored (hamming_scan), packed blocks (hamming_scan_packed), or
// whole rows of byte distances selected by counting (hamming_dist; many queries over a
// small database).
enum class HammingPath { automatic, stream, panel, dense };
HammingPath hamming_path(std::size_t nq, std::size_t nbytes, std::size_t n);

// The Hamming counterpart of force_dot_path, for tests only.
void force_hamming_path(HammingPath path);

}  // namespace cofisearch
