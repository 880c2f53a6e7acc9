#include "search.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "pool.h"
#include "scan.h"
#include "simd.h"
#include "topk.h"

namespace cofisearch {
namespace {

using namespace drivers;

// A batch split by queries is scanned in chunks of queries (query_chunk): a chunk's
// selectors and queries should fit in about an L2 (measured: 512 KiB to 1 MiB ran alike,
// 4 MiB a fifth slower on 64-bit codes), a chunk should hold enough queries that reading
// the database once per chunk costs little, unless its selectors alone would take more
// than kChunkMemoryBytes, and each thread should get a few chunks to claim.
constexpr std::size_t kChunkCacheBytes = std::size_t(1) << 20;
constexpr std::size_t kMinChunkQueries = 64;
constexpr std::size_t kChunkMemoryBytes = std::size_t(64) << 20;
constexpr std::size_t kChunksPerThread = 4;

// A search of few queries split by rows cuts the rows into up to kRowPartsPerThread
// parts per thread, each of at least kRowsPerSelected rows per selected row (see
// row_parts).
constexpr std::size_t kRowPartsPerThread = 4;
constexpr std::size_t kRowsPerSelected = 2048;

// Largest copy of sampled rows that sample_ceilings holds at once.
constexpr std::size_t kSampleBufferBytes = std::size_t(1) << 20;

// The paths the searches take whatever the batch size, for tests; automatic when unset.
std::atomic<int> forced_dot_path{static_cast<int>(DotPath::automatic)};
std::atomic<int> forced_hamming_path{static_cast<int>(HammingPath::automatic)};

template <class Sel>
struct DotScanOf {
  using Order = ScoreOrder;
  using Selector = Sel;
  using Elem = float;
  using Hit = ScoreHit;
  // A multiple of the query panel's 32-query groups and of the row panel's 12-query
  // micro-tile.
  static constexpr std::size_t kTile = 96;
  static constexpr ScanKind kKind = ScanKind::dot;
  const KernelSet& k;
  std::size_t stride;  // floats per vector
  float row_norm;      // bound on every row's norm, NaN if unknown
  DotPath forced;      // DotPath::automatic outside tests
  std::size_t row_bytes() const { return stride * sizeof(float); }

  struct Block {
    const Elem* rows;
    DotPath path;
    const float* qpanel;
  };
  struct Workspace {
    std::vector<float> panel;
    std::vector<float> qpanel;
  };
  // Below the level's dot_panel_min_queries (9 at AVX-512) the kernel reads the rows as
  // stored. Beyond, either the queries are packed once into a query panel, whose cost is
  // the lanes left empty in its last 32-query group, or each block of rows is packed,
  // which costs about as much as scanning 25 more queries. Measured at AVX-512, one
  // thread, d = 512 (query panel vs row panel): 1M rows, 10 queries 137 vs 153 ms, 24
  // queries 140 vs 214; 200k rows, 64 queries 53 vs 72, 100 queries 106 vs 102, 256
  // queries 217 vs 226, 1000 queries 856 vs 826.
  DotPath path(std::size_t nq) const {
    if (forced != DotPath::automatic) return forced;
    if (nq < k.dot_panel_min_queries) return DotPath::stream;
    const std::size_t empty_lanes = (kPanelRows - nq % kPanelRows) % kPanelRows;
    return nq <= kQueryPanelMax && empty_lanes <= 24 ? DotPath::query_panel : DotPath::row_panel;
  }
  void prepare_queries(const Elem* queries, std::size_t nq, Workspace& w) const {
    if (path(nq) != DotPath::query_panel) return;
    const std::size_t groups = (nq + kPanelRows - 1) / kPanelRows;
    w.qpanel.assign(groups * kPanelRows * stride, 0.0f);
    for (std::size_t q = 0; q < nq; ++q) {
      float* group = w.qpanel.data() + q / kPanelRows * kPanelRows * stride;
      for (std::size_t j = 0; j < stride; ++j)
        group[j * kPanelRows + q % kPanelRows] = queries[q * stride + j];
    }
  }
  Block prepare_block(const Elem* rows, std::size_t n, std::size_t nq, Workspace& w) const {
    const DotPath p = path(nq);
    if (p == DotPath::query_panel) return {rows, p, w.qpanel.data()};
    if (p != DotPath::row_panel) return {rows, p, nullptr};
    const std::size_t need = (n + kPanelRows - 1) / kPanelRows * kPanelRows * stride;
    if (w.panel.size() < need) w.panel.resize(need);
    k.dot_pack(rows, n, stride, w.panel.data());
    return {w.panel.data(), p, nullptr};
  }
  // Queries [t, t + nt) of the range's nq; t is a multiple of kTile.
  std::size_t run(const Elem* queries, std::size_t t, std::size_t nt, const Block& b,
                  std::size_t n, const Order::Value* thresh, Hit* hits) const {
    switch (b.path) {
      case DotPath::query_panel:
        return k.dot_scan_qpanel(b.qpanel + t * stride, nt, b.rows, n, stride, thresh, hits);
      case DotPath::row_panel:
        return k.dot_scan_packed(queries + t * stride, nt, b.rows, n, stride, thresh, hits);
      default:
        return k.dot_scan(queries + t * stride, nt, b.rows, n, stride, row_norm, thresh, hits);
    }
  }
  static Order::Value value(const Hit& h) { return h.score; }
  static constexpr bool kSampleCeiling = false;
  Selector selector(std::size_t cap) const { return Selector(cap); }
};
using DotScan = DotScanOf<HeapSelector<ScoreOrder>>;

// With k large, most of a streaming top-k's work is the k * log(n / k) rows per query
// that beat a threshold still on its way down. A sample of the range (evenly spaced
// chunks), searched for a proportionally smaller k with a safety margin, gives each
// query a ceiling that a small multiple of k rows of the range beat; the real scan then
// admits little more than that.
// Returns no ceilings when a sample would not pay. A ceiling is only a guess: queries
// whose selector did not fill below it are searched again without one (scan_into).
template <class S>
std::vector<Value<S>> sample_ceilings(const S& s, const typename S::Elem* rows, std::size_t r0,
                                      std::size_t r1, const typename S::Elem* queries,
                                      std::size_t nq, std::size_t k, ScanBuffers<S>& buf) {
  constexpr std::size_t kChunk = 64;  // rows copied together, so the copy runs at memcpy speed
  const std::size_t n = r1 - r0;
  // Expected rows of the sample inside the top k: more make a tighter ceiling but a larger
  // sample (hits / k of the range), whose own scan admits about rank * log(size) rows.
  // Measured on 1M 64-bit codes, 1000 queries: 4 suits k = 100 (1.20x the time of k = 10,
  // against 1.30x with 8), 8 k = 256, 32 k = 1000 and beyond.
  const std::size_t hits = std::clamp<std::size_t>(k / 32, 4, 32);
  const std::size_t size = hits * n / std::max<std::size_t>(k, 1) / kChunk * kChunk;
  // Below this the sample costs more copying and scanning than the admissions it saves;
  // a lone query admits too few rows at moderate k for the sample to pay.
  if (k < 32 || (nq < 4 && k < 512) || size < 4 * kChunk || size > n / 8) return {};
  const double expected = static_cast<double>(k) * static_cast<double>(size) / static_cast<double>(n);
  const auto rank = static_cast<std::size_t>(std::ceil(expected + 3.0 * std::sqrt(expected) + 2.0));
  std::vector<typename S::Selector> sel;
  sel.reserve(nq);
  for (std::size_t q = 0; q < nq; ++q) sel.push_back(s.selector(rank));
  // The chunks go through a buffer of bounded size, so the sample costs no memory in
  // proportion to the database; the selectors carry over from one fill to the next (row
  // ids restart with each fill, which is harmless: only the rank-th value is used).
  const std::size_t chunks = size / kChunk, chunk_step = n / chunks;
  const std::size_t per_fill =
      std::max<std::size_t>(1, kSampleBufferBytes / (kChunk * s.row_bytes()));
  std::vector<typename S::Elem> buffer(std::min(chunks, per_fill) * kChunk * s.stride);
  for (std::size_t c0 = 0; c0 < chunks; c0 += per_fill) {
    const std::size_t m = std::min(per_fill, chunks - c0);
    for (std::size_t c = 0; c < m; ++c)
      std::copy_n(rows + (r0 + (c0 + c) * chunk_step) * s.stride, kChunk * s.stride,
                  buffer.data() + c * kChunk * s.stride);
    scan_range(s, buffer.data(), 0, m * kChunk, queries, nq, sel.data(), {}, buf);
  }
  std::vector<Value<S>> ceiling(nq);
  std::vector<Entry<typename S::Order>> best(rank);
  for (std::size_t q = 0; q < nq; ++q) {
    const std::size_t got = sel[q].take(best.data());
    ceiling[q] = got == rank ? S::ceiling_from(best[rank - 1].value) : S::Order::open();
  }
  return ceiling;
}

// Offers rows [r0, r1) to the fresh (or reset) selectors of queries [0, nq).
template <class S>
void scan_into(const S& s, const typename S::Elem* rows, std::size_t r0, std::size_t r1,
               const typename S::Elem* queries, std::size_t nq, typename S::Selector* sel,
               std::size_t cap, ScanBuffers<S>& buf, const RowFilter& f) {
  std::vector<Value<S>> ceiling;
  // A sample of every row says nothing of the allowed ones' k-th value: with a filter
  // its ceiling would mostly be too tight, and the queries searched twice.
  if constexpr (S::kSampleCeiling)
    if (!f.allow) ceiling = sample_ceilings(s, rows, r0, r1, queries, nq, cap, buf);
  scan_range(s, rows, r0, r1, queries, nq, sel, ceiling, buf, f.ids, f.allow);
  if (ceiling.empty()) return;
  for (std::size_t q = 0; q < nq; ++q) {
    if (sel[q].full()) continue;
    sel[q].reset();
    scan_range(s, rows, r0, r1, queries + q * s.stride, 1, &sel[q], {}, buf, f.ids, f.allow);
  }
}

// Queries per chunk of a batch split by queries. A thread scans the whole database for
// one chunk at a time with one reused set of selectors, so
// - a chunk's selectors and queries stay in cache while the rows stream past: cycling
//   every block through thousands of queries' selectors made a 5,000 x 5,000 all-vs-all
//   over 64-bit codes take twice as long, a float one at d = 384 a fifth longer;
// - selection memory is O(chunk * k) per thread, whatever the batch (the outputs still
//   hold nq * k);
// - threads claim chunks as they come free, so a thread that starts late or runs on a
//   busy core holds up at most one chunk.
// Each chunk reads the database once more; at kMinChunkQueries or more queries that is
// a few percent of the scan even when the database comes from DRAM.
template <class Selector>
std::size_t query_chunk(const Selector& one, std::size_t row_bytes, std::size_t nq,
                        std::size_t tile, int threads) {
  const std::size_t per_query = one.footprint() + row_bytes;
  const std::size_t by_cache = kChunkCacheBytes / per_query;
  const std::size_t floor = std::min(kMinChunkQueries, kChunkMemoryBytes / per_query);
  const auto T = static_cast<std::size_t>(threads);
  const std::size_t by_balance =
      T > 1 ? (nq + kChunksPerThread * T - 1) / (kChunksPerThread * T) : nq;
  // Never below a whole query tile, nor below a thread's share where that is smaller: a
  // chunk of one query streams the database for that query alone, at a fraction of the
  // rate of a tile of them.
  const std::size_t least = std::min(tile, (nq + T - 1) / T);
  return std::max({std::min(std::max(by_cache, floor), by_balance), least, std::size_t(1)});
}

template <class S, class Out>
void search_by_queries(const S& s, const typename S::Elem* rows, std::size_t n,
                       const typename S::Elem* queries, std::size_t nq, std::size_t k,
                       std::size_t cap, int wanted, Out sentinel, Out* out_v,
                       std::int64_t* out_id, const RowFilter& f) {
  using E = Entry<typename S::Order>;
  const std::size_t chunk = query_chunk(s.selector(cap), s.row_bytes(), nq, S::kTile, wanted);
  const std::size_t chunks = (nq + chunk - 1) / chunk;
  const int T = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(wanted), chunks));
  std::atomic<std::size_t> next{0};
  run_parallel(T, [&](int) {
    std::vector<typename S::Selector> sel;
    ScanBuffers<S> buf;
    std::vector<E> best(cap);
    for (std::size_t c; (c = next.fetch_add(1)) < chunks;) {
      const std::size_t q0 = c * chunk, m = std::min(chunk, nq - q0);
      fresh_selectors(s, sel, m, cap);
      scan_into(s, rows, 0, n, queries + q0 * s.stride, m, sel.data(), cap, buf, f);
      for (std::size_t q = 0; q < m; ++q) {
        const std::size_t got = sel[q].take(best.data());
        write_sorted(best.data(), got, k, sentinel, out_v + (q0 + q) * k, out_id + (q0 + q) * k);
      }
    }
  });
}

// Few queries: the database is cut into parts of contiguous rows, each scanned for all
// the queries; the parts' results merge. Threads claim parts as they come free, so that
// a late or descheduled thread delays the search by one part rather than by half of it;
// but every part fills its own selectors again (about k * log(rows / k) insertions per
// query), so there are only as many parts per thread as keep that below the scan.
std::size_t row_parts(std::size_t n, std::size_t cap, int threads) {
  const auto T = static_cast<std::size_t>(threads);
  const std::size_t per_thread = n / T / std::max<std::size_t>(kRowsPerSelected * cap, 1);
  return T * std::clamp<std::size_t>(per_thread, 1, kRowPartsPerThread);
}

template <class S, class Out>
void search_by_rows(const S& s, const typename S::Elem* rows, std::size_t n,
                    const typename S::Elem* queries, std::size_t nq, std::size_t k,
                    std::size_t cap, int wanted, Out sentinel, Out* out_v,
                    std::int64_t* out_id, const RowFilter& f) {
  using E = Entry<typename S::Order>;
  const std::size_t parts = row_parts(n, cap, wanted);
  std::vector<E> storage(parts * nq * cap);
  std::vector<std::size_t> sizes(parts * nq);
  std::atomic<std::size_t> next{0};
  run_parallel(wanted, [&](int) {
    std::vector<typename S::Selector> sel;
    ScanBuffers<S> buf;
    for (std::size_t p; (p = next.fetch_add(1)) < parts;) {
      const std::size_t r0 = n * p / parts / 64 * 64;
      const std::size_t r1 = p + 1 == parts ? n : n * (p + 1) / parts / 64 * 64;
      fresh_selectors(s, sel, nq, cap);
      scan_into(s, rows, r0, r1, queries, nq, sel.data(), cap, buf, f);
      for (std::size_t q = 0; q < nq; ++q)
        sizes[p * nq + q] = sel[q].take(storage.data() + (p * nq + q) * cap);
    }
  });
  merge_parts(storage, sizes, parts, nq, cap, k, sentinel, out_v, out_id);
}

template <class S, class Out>
void search(const S& s, const typename S::Elem* rows, std::size_t n,
            const typename S::Elem* queries, std::size_t nq, std::size_t k, int nthreads,
            Out sentinel, Out* out_v, std::int64_t* out_id, const RowFilter& f) {
  const std::size_t cap = std::min(k, n);
  if (nq == 0) return;
  if (cap == 0) {
    std::fill(out_v, out_v + nq * k, sentinel);
    std::fill(out_id, out_id + nq * k, -1);
    return;
  }
  // Queries are split only four or more per thread; rows, in 64-row steps.
  const std::size_t work = n * nq * s.row_bytes();
  const int by_queries = threads_for(nthreads, work, nq / 4);
  const int by_rows = threads_for(nthreads, work, n / 64, kMinRowWorkPerThread);
  if (by_rows > by_queries)
    search_by_rows(s, rows, n, queries, nq, k, cap, by_rows, sentinel, out_v, out_id, f);
  else
    search_by_queries(s, rows, n, queries, nq, k, cap, by_queries, sentinel, out_v, out_id, f);
}

// Many queries over a small database: each tile of queries gets its rows of distances
// to every code as bytes (one pass over a packed copy of the database, which stays in
// cache), and each query's top k is then counted out of its row. A streaming top-k admits
// k * log(n / k) rows per query while its threshold comes down, each an insertion in a
// selector that costs as much as scanning dozens of codes; over a few thousand codes those
// admissions, not the scan, were most of the search (a 5,000 x 5,000 all-vs-all over
// 64-bit codes at k = 10: about 85 admissions per query, at a quarter of the codes/s of a
// large batch). Counting costs a pass or two of byte compares per query, whatever k.
constexpr std::size_t kDenseTile = 16;
// Below this many queries, packing the database and the rows of distances cost more than
// the admissions they save.
constexpr std::size_t kDenseMinQueries = 16;

using Hit8 = Entry<HammingOrder>;

// One thread's buffers for select_row, kept from row to row.
struct RowSelection {
  std::vector<std::uint32_t> pos;     // collected codes: those under t, slack, the ties;
                                      // or those up to the first thresholds
  std::vector<std::uint32_t> blocks;  // blocks the last count listed
  std::vector<std::uint32_t> every;   // every block of a row
  std::vector<Hit8> sorted;           // the codes of a row up to the first threshold, sorted
  // Whether select_row collects the next row's codes up to its first thresholds before
  // counting them: while the last row had at most 1.5 of them per listed block.
  bool collect_first = false;
  // A moving average of the recent rows' cap-th distances: this row's, give or take one
  // (counted for 1,000 random queries over 5,000 codes at k = 10, it took 4.1 / 4.5 / 5.7
  // thresholds a row at 64 / 128 / 256 bits, against 4.2 / 5.2 / 6.9 guessing the
  // previous row's). Negative until the first row.
  float level = -1.0f;

  // The thresholds counted first: the neighbourhood of the guess g, g - 2 ... g + 1,
  // which settles g - 1 ... g + 1 in one count.
  void first_thresholds(std::uint8_t* t) const {
    const auto g = level < 0 ? 0u : static_cast<std::uint32_t>(level + 0.5f);
    for (std::size_t j = 0; j < kCountSpan; ++j)
      t[j] = static_cast<std::uint8_t>(std::min<std::uint32_t>(
          g - std::min(g, 2u) + static_cast<std::uint32_t>(j), kByteDistanceMax - 1));
  }
};

// The cap best of one row d of ld byte distances (kernels.h), best first, into best. The
// kernel that wrote the row listed its nfirst blocks holding a distance up to
// first[kCountSpan - 1]; the best are collected there, or the row is counted there at
// the thresholds `first`, then as many more times as it takes. A row has at least cap
// codes, but those past kByteDistanceMax are saturated there: returns false when the
// cap-th best is one of them (the caller then searches the query exactly).
bool select_row(const KernelSet& ks, const std::uint8_t* d, std::size_t ld, std::size_t cap,
                const std::uint8_t* first, const std::uint32_t* listed, std::size_t nfirst,
                RowSelection& w, Hit8* best) {
  constexpr std::uint32_t kTop = kByteDistanceMax;
  const std::size_t nblocks = ld / kDistBlock;
  if (w.every.size() != nblocks) {
    w.every.resize(nblocks);
    for (std::size_t b = 0; b < nblocks; ++b) w.every[b] = static_cast<std::uint32_t>(b * kDistBlock);
    w.blocks.resize(nblocks);
  }
  // Usually the guess holds: the listed blocks hold the cap-th distance, with two or
  // three times cap codes at or below the top threshold (random 64-bit codes, 5,000 of
  // them, k = 10: 22 in 19 blocks of 79). Those can be collected in one pass, in id
  // order, and sorted by distance, where counting first and collecting at the count's
  // answer read the blocks twice. That pays while the blocks hold about one such code
  // each; past that the sort and the collect's loop over each block's codes grow and the
  // count does not. One thread, all-vs-all, time of the one pass over the two, (codes
  // per listed block) (Intel Xeon, family 6 model 106): 64 bits, 5,000 codes, k = 10
  // 0.95 (1.15), 20 0.95 (1.3), 32 1.0 (1.6), 50 1.35 (2), 100 1.6 (3.4); 1,000 codes
  // k = 10 1.15 (2). The last row's ratio decides for the next (a count of the first
  // thresholds gives it too).
  const std::uint8_t top = first[kCountSpan - 1];
  const auto few_per_block = [nfirst](std::size_t codes) { return 2 * codes <= 3 * nfirst; };
  if (w.pos.size() < ld + kCollectSlack) w.pos.resize(ld + kCollectSlack);
  std::size_t up_to = 0;
  if (w.collect_first) {
    up_to = ks.hamming_collect(d, listed, nfirst, static_cast<std::uint8_t>(top + 1), 0,
                               w.pos.data(), nullptr);
    w.collect_first = few_per_block(up_to);
  }
  if (up_to >= cap) {
    std::uint32_t start[kTop + 1];
    std::fill_n(start, top + 1u, 0u);
    for (std::size_t i = 0; i < up_to; ++i) ++start[d[w.pos[i]]];
    std::uint32_t sum = 0;
    for (std::uint32_t v = 0; v <= top; ++v) sum += std::exchange(start[v], sum);
    if (w.sorted.size() < up_to) w.sorted.resize(up_to);
    for (std::size_t i = 0; i < up_to; ++i) {
      const std::uint32_t p = w.pos[i], v = d[p];
      w.sorted[start[v]++] = {v, static_cast<std::int64_t>(p)};
    }
    std::copy_n(w.sorted.data(), cap, best);
    const auto kth = static_cast<float>(best[cap - 1].value);
    w.level = w.level < 0 ? kth : w.level + 0.25f * (kth - w.level);
    return true;
  }
  // The cap-th distance lies in [lo, hi]; `below` counts the distances under lo.
  std::uint32_t lo = 0, hi = kTop;
  std::size_t below = 0;
  std::uint8_t t[kCountSpan];
  std::copy_n(first, kCountSpan, t);
  std::uint32_t counts[kCountSpan];
  // A count lists, in w.blocks, the blocks holding a distance up to its highest
  // threshold: below that, the next count or the collect reads only those.
  std::size_t nlisted = ks.hamming_count(d, listed, nfirst, t, counts, w.blocks.data());
  w.collect_first = few_per_block(counts[kCountSpan - 1]);
  for (;;) {
    for (std::size_t j = 0; j < kCountSpan; ++j) {
      if (counts[j] >= cap) {
        hi = std::min<std::uint32_t>(hi, t[j]);
      } else if (t[j] + 1u > lo) {
        lo = t[j] + 1u;
        below = counts[j];
      }
    }
    if (lo == hi) break;
    const bool within = hi <= t[kCountSpan - 1];
    // Next: the first values from lo when few are left, else the interval cut in five.
    for (std::size_t j = 0; j < kCountSpan; ++j) {
      const auto step = static_cast<std::uint32_t>(j);
      t[j] = static_cast<std::uint8_t>(hi - lo <= kCountSpan
                                           ? std::min(lo + step, hi - 1)
                                           : lo + (hi - lo) * (step + 1) / (kCountSpan + 1));
    }
    nlisted = within ? ks.hamming_count(d, w.blocks.data(), nlisted, t, counts, w.blocks.data())
                     : ks.hamming_count(d, w.every.data(), nblocks, t, counts, w.blocks.data());
  }
  w.level = w.level < 0 ? static_cast<float>(lo) : w.level + 0.25f * (static_cast<float>(lo) - w.level);
  if (lo == kTop) return false;
  const bool within = lo <= t[kCountSpan - 1];
  std::uint32_t* const under = w.pos.data();
  std::uint32_t* const tied = under + below + kCollectSlack;
  ks.hamming_collect(d, within ? w.blocks.data() : w.every.data(), within ? nlisted : nblocks,
                     static_cast<std::uint8_t>(lo), cap - below, under, tied);
  // Codes under lo come in id order; a counting sort by distance keeps that order within
  // each distance, which is the tie-break. The ties at lo follow, in id order.
  std::uint32_t start[kTop + 1];
  std::fill_n(start, lo + 1, 0u);
  for (std::size_t i = 0; i < below; ++i) ++start[d[under[i]] + 1];
  for (std::uint32_t v = 1; v <= lo; ++v) start[v] += start[v - 1];
  for (std::size_t i = 0; i < below; ++i) {
    const std::uint32_t p = under[i], v = d[p];
    best[start[v]++] = {v, static_cast<std::int64_t>(p)};
  }
  for (std::size_t i = below; i < cap; ++i) best[i] = {lo, static_cast<std::int64_t>(tied[i - below])};
  return true;
}

bool dense_pays(const KernelSet& ks, std::size_t n, std::size_t nbytes, std::size_t nq,
                HammingPath forced) {
  // Positions are 32-bit, and a row of distances must fit a byte per code.
  if (n >= (std::size_t(1) << 32) || nbytes * 8 > kMaxCountingBits) return false;
  if (forced != HammingPath::automatic) return forced == HammingPath::dense;
  return nq >= kDenseMinQueries && n <= ks.hamming_dense_max_rows(nbytes);
}

void hamming_dense(const HammingScan<CountingSelector>& s, const std::uint8_t* codes,
                   std::size_t n, const std::uint8_t* queries, std::size_t nq, std::size_t k,
                   std::size_t cap, int nthreads, std::uint32_t* out_v, std::int64_t* out_id) {
  const KernelSet& ks = s.k;
  const std::size_t words = s.words();
  const std::size_t ld = (n + kDistBlock - 1) / kDistBlock * kDistBlock;
  // The database once, as the level's kernel reads it (kernels.h).
  static_assert(kMaxCountingBits <= 64 * kDenseMaxWords, "dense panels hold every counted width");
  std::vector<std::uint64_t> panel(ld * words);
  ks.hamming_dense_pack(codes, n, s.stride, panel.data());
  const std::size_t tiles = (nq + kDenseTile - 1) / kDenseTile;
  const int T = threads_for(nthreads, n * nq * s.stride, tiles);
  const auto sentinel = static_cast<std::uint32_t>(kHammingSentinel);
  std::atomic<std::size_t> next{0};
  run_parallel(T, [&](int) {
    std::vector<std::uint8_t> dist(kDenseTile * ld);
    std::vector<std::uint64_t> qwords(kDenseTile * words);
    std::vector<std::uint32_t> listed(kDenseTile);
    std::vector<std::uint32_t> blocks(kDenseTile * (ld / kDistBlock));
    RowSelection rows;
    std::vector<Hit8> best(cap);
    // For the rare query whose k-th distance is past a byte (codes of 255 bits or more).
    std::vector<CountingSelector> exact;
    ScanBuffers<HammingScan<CountingSelector>> buf;
    for (std::size_t tile; (tile = next.fetch_add(1)) < tiles;) {
      const std::size_t q0 = tile * kDenseTile, m = std::min(kDenseTile, nq - q0);
      std::fill(qwords.begin(), qwords.end(), 0);
      for (std::size_t q = 0; q < m; ++q)
        std::memcpy(qwords.data() + q * words, queries + (q0 + q) * s.stride, s.stride);
      // The tile's rows are counted first around the guess as the tile starts.
      std::uint8_t first[kCountSpan];
      rows.first_thresholds(first);
      ks.hamming_dist(qwords.data(), m, panel.data(), n, words, dist.data(), ld,
                      {first[kCountSpan - 1], blocks.data(), listed.data()});
      for (std::size_t q = 0; q < m; ++q) {
        const std::size_t row = q0 + q;
        std::size_t got = cap;
        if (!select_row(ks, dist.data() + q * ld, ld, cap, first,
                        blocks.data() + q * (ld / kDistBlock), listed[q], rows, best.data())) {
          fresh_selectors(s, exact, 1, cap);
          scan_range(s, codes, 0, n, queries + row * s.stride, 1, exact.data(), {}, buf);
          got = exact[0].take(best.data());
        }
        write_sorted(best.data(), got, k, sentinel, out_v + row * k, out_id + row * k);
      }
    }
  });
}

}  // namespace

void hamming_search(const std::uint8_t* codes, std::size_t n, std::size_t nbytes,
                    const std::uint8_t* queries, std::size_t nq, std::size_t k, int nthreads,
                    std::int32_t* distances, std::int64_t* ids, const RowFilter& filter) {
  const KernelSet& kernels = kernels_for(current_simd_level());
  const auto forced = static_cast<HammingPath>(forced_hamming_path.load());
  // Distances fit in int32 (the bindings cap code widths far below 2^31 bits), and the
  // unsigned and signed forms of one type may alias.
  auto* dist = reinterpret_cast<std::uint32_t*>(distances);
  const auto sentinel = static_cast<std::uint32_t>(kHammingSentinel);
  // Counting selection needs a counter per possible distance; very wide codes use a heap.
  const bool in_order = filter.ids == nullptr || filter.ids_ascending;
  if (nbytes * 8 <= kMaxCountingBits) {
    const HammingScan<CountingSelector> s{kernels, nbytes, forced};
    // The rows of distances are selected whole, by row: a filter would need its own
    // count, so a filtered search streams (ids in row order are renamed afterwards).
    if (nq > 0 && n > 0 && k > 0 && !filter.allow && in_order &&
        dense_pays(kernels, n, nbytes, nq, forced)) {
      hamming_dense(s, codes, n, queries, nq, k, std::min(k, n), nthreads, dist, ids);
      if (filter.ids)
        for (std::size_t i = 0; i < nq * k; ++i)
          if (ids[i] >= 0) ids[i] = filter.ids[ids[i]];
    } else if (in_order) {
      search(s, codes, n, queries, nq, k, nthreads, sentinel, dist, ids, filter);
    } else {
      search(HammingScan<AdmitTies<CountingSelector>>{kernels, nbytes, forced}, codes, n,
             queries, nq, k, nthreads, sentinel, dist, ids, filter);
    }
  } else if (in_order) {
    search(HammingScan<HeapSelector<HammingOrder>>{kernels, nbytes, forced}, codes, n, queries, nq, k,
           nthreads, sentinel, dist, ids, filter);
  } else {
    search(HammingScan<AdmitTies<HeapSelector<HammingOrder>>>{kernels, nbytes, forced}, codes, n,
           queries, nq, k, nthreads, sentinel, dist, ids, filter);
  }
}

void dot_search(const float* rows, std::size_t n, std::size_t dim, float row_norm,
                const float* queries, std::size_t nq, std::size_t k, int nthreads, float* scores,
                std::int64_t* ids, const RowFilter& filter) {
  const KernelSet& kernels = kernels_for(current_simd_level());
  const auto forced = static_cast<DotPath>(forced_dot_path.load());
  if (filter.ids == nullptr || filter.ids_ascending)
    search(DotScan{kernels, dim, row_norm, forced}, rows, n, queries, nq, k, nthreads,
           kScoreSentinel, scores, ids, filter);
  else
    search(DotScanOf<AdmitTies<HeapSelector<ScoreOrder>>>{kernels, dim, row_norm, forced}, rows,
           n, queries, nq, k, nthreads, kScoreSentinel, scores, ids, filter);
}

namespace {

// Pairs a thread scores at once over a packed panel: their scores stay within about an L2.
constexpr std::size_t kPackedChunkPairs = std::size_t(1) << 15;

// Scores every (query, row) pair of the nq queries over a packed panel of n rows, a
// chunk of queries at a time, split over threads by chunks; each chunk's hits (every pair,
// under an open threshold) go to take(scratch, q0, m, hits, count), with a Scratch of
// the part that scored them.
template <class Scratch, class Take>
void score_packed(const float* panel, std::size_t n, std::size_t dim, const float* queries,
                  std::size_t nq, int nthreads, Take take) {
  if (nq == 0) return;
  const KernelSet& kernels = kernels_for(current_simd_level());
  const std::size_t chunk = std::clamp<std::size_t>(kPackedChunkPairs / std::max<std::size_t>(n, 1), 1, nq);
  const std::size_t chunks = (nq + chunk - 1) / chunk;
  const int T = threads_for(nthreads, nq * n * dim * sizeof(float), chunks);
  std::atomic<std::size_t> next{0};
  run_parallel(T, [&](int) {
    std::vector<ScoreHit> hits(chunk * n);
    Scratch scratch;
    // An open threshold (NaN) admits every pair.
    const std::vector<float> open(chunk, ScoreOrder::open());
    for (std::size_t c; (c = next.fetch_add(1)) < chunks;) {
      const std::size_t q0 = c * chunk, m = std::min(chunk, nq - q0);
      const std::size_t got = kernels.dot_scan_packed(queries + q0 * dim, m, panel, n, dim, open.data(), hits.data());
      if (got != m * n) throw std::logic_error("score_packed: a kernel dropped a pair under an open threshold");
      take(scratch, q0, m, hits.data(), got);
    }
  });
}

// A probe keeping at least this share of the lists (1 / kPackedShare; 1 / kPackedShareOne
// for a lone query) scores them all (dot_search_packed). Measured against dot_search (one
// thread, 256-d, 491 to 4,096 rows, 1 to 64 queries, session 9): a lone query ran 1.03-2.1x
// faster from 1/16 of the rows kept, a batch 1.03-1.7x from 1/8; below those shares the
// whole rows' selection cost up to 3x more than the fused one.
constexpr std::size_t kPackedShare = 8;
constexpr std::size_t kPackedShareOne = 16;

}  // namespace

void dot_pack(const float* rows, std::size_t n, std::size_t dim, float* panel) {
  kernels_for(current_simd_level()).dot_pack(rows, n, dim, panel);
}

void dot_search_packed(const float* panel, std::size_t n, std::size_t dim, const float* queries,
                       std::size_t nq, std::size_t k, int nthreads, float* scores,
                       std::int64_t* ids) {
  using E = Entry<ScoreOrder>;
  const std::size_t keep = std::min(k, n);
  score_packed<std::vector<E>>(panel, n, dim, queries, nq, nthreads,
               [&](std::vector<E>& rows, std::size_t q0, std::size_t m, const ScoreHit* hits, std::size_t got) {
                 rows.resize(m * n);
                 for (std::size_t h = 0; h < got; ++h)
                   rows[hits[h].query * n + hits[h].row] = {hits[h].score, hits[h].row};
                 for (std::size_t q = 0; q < m; ++q) {
                   E* e = rows.data() + q * n;
                   if (keep < n) std::nth_element(e, e + keep, e + n);
                   std::sort(e, e + keep);
                   write_sorted(e, keep, k, kScoreSentinel, scores + (q0 + q) * k, ids + (q0 + q) * k);
                 }
               });
}

void dot_route(const float* rows, const float* panel, std::size_t n, std::size_t dim,
               float row_norm, const float* queries, std::size_t nq, std::size_t k, int nthreads,
               float* scores, std::int64_t* ids) {
  if (k * kPackedShare >= n || (nq == 1 && k * kPackedShareOne >= n))
    dot_search_packed(panel, n, dim, queries, nq, k, nthreads, scores, ids);
  else
    dot_search(rows, n, dim, row_norm, queries, nq, k, nthreads, scores, ids);
}

void dot_scores_packed(const float* panel, std::size_t n, std::size_t dim, const float* queries,
                       std::size_t nq, int nthreads, float* out) {
  struct None {};
  score_packed<None>(panel, n, dim, queries, nq, nthreads,
               [&](None&, std::size_t q0, std::size_t, const ScoreHit* hits, std::size_t got) {
                 for (std::size_t h = 0; h < got; ++h) out[(q0 + hits[h].query) * n + hits[h].row] = hits[h].score;
               });
}

namespace {

// The gather searches' driver: score(q, rows, m, values) scores query q against the m
// listed rows; each query keeps its best k, as ids.
template <class Order, class Score>
void gather_search(std::size_t nq, const std::int64_t* rows, std::size_t m, std::size_t k,
                   int nthreads, std::size_t row_bytes, typename Order::Value sentinel,
                   typename Order::Value* out_v, std::int64_t* out_id, const std::int64_t* ids,
                   Score score) {
  using E = Entry<Order>;
  const int T = threads_for(nthreads, nq * m * row_bytes, nq);
  const std::size_t per_chunk = (nq + kChunksPerThread * static_cast<std::size_t>(T) - 1) /
                                (kChunksPerThread * static_cast<std::size_t>(T));
  std::atomic<std::size_t> next{0};
  run_parallel(T, [&](int) {
    std::vector<typename Order::Value> values(m);
    std::vector<E> entries(m);
    for (std::size_t q0; (q0 = next.fetch_add(per_chunk)) < nq;) {
      for (std::size_t q = q0; q < std::min(nq, q0 + per_chunk); ++q) {
        score(q, values.data());
        for (std::size_t j = 0; j < m; ++j) entries[j] = {values[j], ids ? ids[rows[j]] : rows[j]};
        const std::size_t keep = std::min(k, m);
        std::partial_sort(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(keep),
                          entries.end());
        write_sorted(entries.data(), keep, k, sentinel, out_v + q * k, out_id + q * k);
      }
    }
  });
}

}  // namespace

void hamming_gather_search(const std::uint8_t* codes, std::size_t nbytes,
                           const std::uint8_t* queries, std::size_t nq, const std::int64_t* rows,
                           std::size_t m, std::size_t k, int nthreads, std::int32_t* distances,
                           std::int64_t* out_ids, const std::int64_t* ids) {
  // A few hundred rows at most (the caller's choice): a portable popcount over 8-byte
  // words is far from the cost of the calling overhead.
  auto* dist = reinterpret_cast<std::uint32_t*>(distances);
  gather_search<HammingOrder>(
      nq, rows, m, k, nthreads, nbytes, static_cast<std::uint32_t>(kHammingSentinel), dist,
      out_ids, ids, [&](std::size_t q, std::uint32_t* values) {
        const std::uint8_t* a = queries + q * nbytes;
        for (std::size_t j = 0; j < m; ++j)
          values[j] = hamming_b8_distance_scalar(
              a, codes + static_cast<std::size_t>(rows[j]) * nbytes, nbytes);
      });
}

void dot_gather_search(const float* db, std::size_t dim, const float* queries, std::size_t nq,
                       const std::int64_t* rows, std::size_t m, std::size_t k, int nthreads,
                       float* scores, std::int64_t* out_ids, const std::int64_t* ids) {
  DotGatherFn* const gather = kernels_for(current_simd_level()).dot_gather;
  gather_search<ScoreOrder>(nq, rows, m, k, nthreads, dim * sizeof(float), kScoreSentinel, scores,
                            out_ids, ids, [&](std::size_t q, float* values) {
                              gather(queries + q * dim, db, dim, rows, m, values);
                            });
}

void dot_rerank(const float* rows, std::size_t dim, const float* queries, std::size_t nq,
                const std::int64_t* candidates, std::size_t c, std::size_t k, int nthreads,
                float* scores, std::int64_t* ids) {
  using E = Entry<ScoreOrder>;
  DotGatherFn* const gather = kernels_for(current_simd_level()).dot_gather;
  const int T = threads_for(nthreads, nq * c * dim * sizeof(float), nq);
  // Threads claim chunks of queries as they come free (see query_chunk).
  const std::size_t per_chunk = (nq + kChunksPerThread * static_cast<std::size_t>(T) - 1) /
                                (kChunksPerThread * static_cast<std::size_t>(T));
  std::atomic<std::size_t> next{0};
  run_parallel(T, [&](int) {
    std::vector<std::int64_t> row_ids(c);
    std::vector<float> row_scores(c);
    std::vector<E> entries(c);
    for (std::size_t q0; (q0 = next.fetch_add(per_chunk)) < nq;) {
      for (std::size_t q = q0; q < std::min(nq, q0 + per_chunk); ++q) {
        const std::int64_t* cand = candidates + q * c;
        std::size_t m = 0;
        for (std::size_t j = 0; j < c; ++j)
          if (cand[j] >= 0) row_ids[m++] = cand[j];
        gather(queries + q * dim, rows, dim, row_ids.data(), m, row_scores.data());
        for (std::size_t j = 0; j < m; ++j) entries[j] = {row_scores[j], row_ids[j]};
        auto first = entries.begin();
        auto last = first + static_cast<std::ptrdiff_t>(m);
        std::size_t keep = std::min(k, m);
        std::partial_sort(first, first + static_cast<std::ptrdiff_t>(keep), last);
        // A repeated id scores identically, so repeats are adjacent once sorted. Screens
        // rarely repeat ids: only then pay for a full sort and a dedup.
        bool repeated = false;
        for (std::size_t j = 1; j < keep && !repeated; ++j) repeated = entries[j].id == entries[j - 1].id;
        if (repeated) {
          std::sort(first, last);
          last = std::unique(first, last, [](const E& a, const E& b) { return a.id == b.id; });
          keep = std::min(k, static_cast<std::size_t>(last - first));
        }
        write_sorted(entries.data(), keep, k, kScoreSentinel, scores + q * k, ids + q * k);
      }
    }
  });
}

std::size_t scan_block_rows(ScanKind kind, std::size_t row_bytes, std::size_t nq) {
  return full_block_rows(kind, row_bytes, nq);
}

std::vector<std::size_t> scan_blocks(ScanKind kind, std::size_t row_bytes, std::size_t nq,
                                     std::size_t n) {
  const std::size_t block = full_block_rows(kind, row_bytes, nq);
  std::vector<std::size_t> out;
  for (std::size_t b = 0, step = first_block_rows(kind, block); b < n;
       b += step, step = next_block_rows(step, block))
    out.push_back(std::min(step, n - b));
  return out;
}

DotPath dot_path(std::size_t nq) {
  const DotScan s{kernels_for(current_simd_level()), 0, 0.0f,
                  static_cast<DotPath>(forced_dot_path.load())};
  return s.path(nq);
}

void force_dot_path(DotPath path) { forced_dot_path.store(static_cast<int>(path)); }

HammingPath hamming_path(std::size_t nq, std::size_t nbytes, std::size_t n) {
  const KernelSet& kernels = kernels_for(current_simd_level());
  const auto forced = static_cast<HammingPath>(forced_hamming_path.load());
  if (dense_pays(kernels, n, nbytes, nq, forced)) return HammingPath::dense;
  return HammingScan<CountingSelector>{kernels, nbytes, forced}.path(nq);
}

HammingPath drivers::hamming_path_override() {
  return static_cast<HammingPath>(forced_hamming_path.load());
}

void force_hamming_path(HammingPath path) {
  forced_hamming_path.store(static_cast<int>(path));
}

}  // namespace cofisearch
