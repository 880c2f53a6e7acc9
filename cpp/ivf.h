// Inverted-file probe driver (layer 4 of STYLE.md): exact Hamming top-k of each query over
// the items of the inverted lists it probes, with the selection fused into the scan.
//
// Contract:
// - the lists share one buffer of codes of `nbytes` bytes, packed back to back; list l is
//   rows [start[l], start[l] + size[l]) of it, contiguous, so that the level's kernels
//   scan it as they scan a whole database; ids[r] is the id that row r reports. Rows
//   outside every list (room left for later adds) are never read. The caller checks that
//   every list lies inside the buffer;
// - allow, when not null, has a bit per row of the buffer (bit r % 64 of word r / 64):
//   only rows whose bit is set are reported (a filtered search; the kernels still
//   compare every row of a probed list, the filter is checked on the hit path);
// - probes is nq x nprobe list numbers, row q naming the lists query q scans; -1 entries
//   are skipped and a list named twice is scanned once;
// - outputs as in search.h: caller-owned nq x k arrays, each row the exact top-k of the
//   items of the probed lists, best-first (distance ascending, ties by the smaller id),
//   padded with id -1 and kHammingSentinel;
// - the batch is scanned list-major: each probed list is read once for all the queries
//   that probe it (in query tiles, packed into a code panel when they are enough to repay
//   it, as hamming_search decides), each hit going to its query's selector with the
//   list's ids. Many queries are split across threads; few split the probed lists and
//   merge. Results are identical for every thread count and SIMD level;
// - the SIMD level is read once per call; no Python here, and no exception escapes a
//   worker: the first one is rethrown on the calling thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cofisearch {

struct InvertedLists {
  const std::uint8_t* codes;  // rows of nbytes bytes
  const std::int64_t* ids;    // one per row
  const std::int64_t* start;  // nlist first rows
  const std::int64_t* size;   // nlist row counts
  std::size_t nlist;
  std::size_t nbytes;
  const std::uint64_t* allow = nullptr;  // a bit per row, or null: every row
};

// Asymmetric screening (asym.h) over the same kind of lists, of 1-bit codes of nbytes
// bytes with one factor each (factors[r] for row r): each query gets the top-k estimated
// inner products over the items of the lists it probes, best-first (score descending,
// ties by the smaller id), padded with id -1 and kScoreSentinel; the same threading,
// determinism and exception contract as the Hamming probe.
//   planes: nq x qbits x nbytes bytes, query q's bit planes (packed like the codes);
//   consts: nq x 3 floats, (scale, lo2, shift) of each query;
//   bias:   nq x nprobe floats, bias[q * nprobe + j] the <centroid, query> of list
//           probes[q * nprobe + j] (where a list is named twice, its first entry counts).
struct AsymQueries {
  const std::uint8_t* planes;
  std::size_t qbits;
  const float* consts;
  const float* bias;
};

// The lists' codes already in the kernels' panel layout (kernels.h, HammingPackFn), so
// that a scan reads them in place instead of packing each block: list l is the
// ceil(size[l] / kCodeGroup) groups from group start[l] of `panel` (zero past the code's
// bytes; rows past the list's size may hold anything, the kernels never report them).
// Optional: without it every block is packed from the row-major codes.
struct AsymPanel {
  const std::uint64_t* panel = nullptr;
  const std::int64_t* start = nullptr;  // nlist first groups
};

// The asymmetric screen's form of nq float queries of nbits dimensions (their rotated
// vectors w, row-major), as AsymQueries takes them: each row is cut to qbits bits a
// dimension, u = min(rint((w - lo) / delta), 2^qbits - 1) with lo = min(w) and
// delta = (max(w) - lo) / (2^qbits - 1) (1 for a constant row), in float32 one rounding
// per operation and ties to even (cofisearch._reference.quantize_queries is the
// specification, bit for bit). planes gets qbits * nbits / 8 bytes a query, plane j
// holding bit j of every u packed like numpy.packbits (dimension i in bit 7 - i % 8 of
// byte i / 8); consts gets (2 delta, 2 lo, shift) with shift = -(nbits * lo + delta * sum u),
// minus the sum of the quantised query, which only integers and two roundings make, so
// that the estimate is the inner product of the quantised query with the code's signs.
// nbits is a multiple of 8; every w must be finite (returns false otherwise, writing
// nothing of that query and those after it).
bool quantize_queries(const float* rotated, std::size_t nq, std::size_t nbits, std::size_t qbits,
                      std::uint8_t* planes, float* consts);

void ivf_asym_search(const InvertedLists& lists, const float* factors, const AsymQueries& queries,
                     std::size_t nq, const std::int64_t* probes, std::size_t nprobe, std::size_t k,
                     int nthreads, float* scores, std::int64_t* ids, const AsymPanel& panel = {});

// How the asymmetric screen meets a float query (the IVF index's routing and rotation):
// centroids (nlist x dim rows, and packed by dot_pack; row_norm bounds their norms) to
// route by inner product, each list's centre as scale[l] times its centroid, and the
// rotation's bits columns as the rows of a dot_pack panel (bits x dim).
struct AsymRouting {
  const float* centroids;
  const float* centroid_panel;
  std::size_t nlist;
  std::size_t dim;
  float row_norm;
  const float* scale;
  const float* rotation_panel;
  std::size_t bits;  // the codes' bits: nbytes * 8
};

// A whole asymmetric search of nq float queries (nq x dim, finite): each query is routed
// to its nprobe nearest centroids (dot_route; nprobe <= nlist), rotated (dot_scores_packed
// over the rotation panel), quantised to qbits bits a dimension (quantize_queries) and
// scanned over those lists with bias[j] = scale[l] * <centroid l, query> (the product in
// float32) for its j-th list l (ivf_asym_search, same outputs): one call for what would
// otherwise be five, a single query's fixed costs. A batch runs in passes of at most
// kQueryPassBytes of those steps' temporaries (each query's results are the same in any
// pass). Returns false, its outputs then unspecified, where a rotated query is not finite
// (a query so large that its rotation overflows).
constexpr std::size_t kQueryPassBytes = std::size_t(16) << 20;
bool ivf_asym_query(const InvertedLists& lists, const float* factors, const AsymRouting& routing,
                    const float* vectors, std::size_t nq, std::size_t qbits, std::size_t nprobe,
                    std::size_t k, int nthreads, float* scores, std::int64_t* ids,
                    const AsymPanel& panel = {});

void ivf_hamming_search(const InvertedLists& lists, const std::uint8_t* queries, std::size_t nq,
                        const std::int64_t* probes, std::size_t nprobe, std::size_t k,
                        int nthreads, std::int32_t* distances, std::int64_t* ids);

}  // namespace cofisearch
