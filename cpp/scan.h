// Scan-driver internals shared by the drivers (layer 4 of STYLE.md): search.cpp (whole
// database) and ivf.cpp (inverted lists). What one driver decides about cache blocks,
// threads, the Hamming kernel path and the fused selection, the other decides the same
// way, from this one copy.
//
// Included only by baseline units (never by a unit compiled with ISA flags, see
// kernels.h): its inline functions and templates are then compiled for every processor.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "search.h"
#include "topk.h"

namespace cofisearch {
namespace drivers {

// Scanning per thread (rows x queries x bytes per row) below which another thread does
// not pay. Measured on 2 vCPUs (Intel Xeon @2.80GHz, another process busy on them), 2
// threads against 1:
// - a batch split by queries is compute-bound, and the pool wakes a worker in
//   microseconds: 64-bit codes, 16,000 rows, 16 / 32 / 64 queries (2 / 4 / 8 MB of work)
//   ran 1.12x / 1.10-1.32x / 1.18x faster split;
// - a few queries split by rows stream the database: from memory, with the other vCPU
//   busy, a second thread found no more bandwidth (two threads read 64 MB at 9.7 GB/s,
//   one at 9.6; one query over 1M 64-bit codes split in two ran 0.93-0.96x), but from
//   the L3, where a database searched again and again sits, and on an idle machine it
//   pays: one query over 1M 64-bit codes (8 MB) 1.46-1.54x, over 1M 128-bit codes
//   2.3-2.5x (warm caches, quiet; session 8), over 1M 256-bit codes 1.3-2x.
constexpr std::size_t kMinWorkPerThread = std::size_t(1) << 20;
constexpr std::size_t kMinRowWorkPerThread = std::size_t(2) << 20;

// Rows per cache block: a block is scanned by every query tile before the next block is
// touched, so it should sit in L2 while the queries cycle through L1.
constexpr std::size_t kBlockBytes = std::size_t(64) << 10;

// Counting selection keeps a counter per possible distance for every query; wider codes
// use a heap, so a search's memory stays O(queries * k) rather than O(queries * nbits).
constexpr std::size_t kMaxCountingBits = 1024;

// Batches of up to kQueryPanelMax queries may pack the queries into a query panel rather
// than pack each block of rows (see DotScan::path).
constexpr std::size_t kQueryPanelMax = 256;

// Bytes of rows per cache block (a block is scanned by every query tile before the next
// block is touched). A batch cycles its queries over a block, which must then stay in L2;
// a few queries (or a query panel) read a block once or twice, and longer blocks keep
// the software prefetch running ahead.
inline std::size_t block_bytes(ScanKind kind, std::size_t nq) {
  return kind == ScanKind::dot && nq <= kQueryPanelMax ? 8 * kBlockBytes : kBlockBytes;
}

// Rows per full block: a multiple of a packed strip, so that only the last block of a
// range has padding.
inline std::size_t full_block_rows(ScanKind kind, std::size_t row_bytes, std::size_t nq) {
  return std::max<std::size_t>(64, block_bytes(kind, nq) / std::max<std::size_t>(row_bytes, 1)) /
         kPanelRows * kPanelRows;
}

// A kernel compares against the thresholds it was given for its whole block, and they
// are open until the heaps fill: one full first block would turn every one of its rows
// into a heap insertion for every query. Doubling the block from a small start keeps
// the insertions near k * log(block) per query. Over a small database those insertions
// are much of a Hamming search's cost, and a start of 16 rows rather than 64 saved 10-20%
// of a 5,000 x 5,000 all-vs-all at k = 10 (a quarter fewer insertions); float rows cost
// far more to scan than to insert, and a packed block should fill whole 32-row strips.
inline std::size_t first_block_rows(ScanKind kind, std::size_t full) {
  return std::min<std::size_t>(full, kind == ScanKind::hamming ? 16 : 64);
}
inline std::size_t next_block_rows(std::size_t step, std::size_t full) { return std::min(2 * step, full); }

inline int threads_for(int requested, std::size_t work, std::size_t max_parts,
                std::size_t min_work = kMinWorkPerThread) {
  std::size_t by_work = work / min_work;
  std::size_t t = std::min<std::size_t>({static_cast<std::size_t>(std::max(requested, 1)),
                                         std::max<std::size_t>(by_work, 1), max_parts});
  return static_cast<int>(std::max<std::size_t>(t, 1));
}

// The path that force_hamming_path set (HammingPath::automatic outside tests).
HammingPath hamming_path_override();

// What the generic driver needs to know about one kind of scan.
template <class Sel>
struct HammingScan {
  using Order = HammingOrder;
  using Selector = Sel;
  using Elem = std::uint8_t;
  using Hit = HammingHit;
  static constexpr std::size_t kTile = kMaxQueryTile;
  static constexpr ScanKind kKind = ScanKind::hamming;
  const KernelSet& k;
  std::size_t stride;  // bytes per code
  HammingPath forced;  // HammingPath::automatic outside tests
  std::size_t row_bytes() const { return stride; }
  std::size_t words() const { return (stride + 7) / 8; }

  struct Block {
    const Elem* rows;
    const std::uint64_t* panel;   // null when the codes are read as stored
    const std::uint64_t* qwords;
  };
  struct Workspace {
    std::vector<std::uint64_t> qwords;
    std::vector<std::uint64_t> panel;
  };
  // From the level's threshold for this width, packing a block costs less than what the
  // panel kernel saves the queries (simd.cpp).
  HammingPath path(std::size_t nq) const {
    // Rows of byte distances are a whole-search driver of their own (search.cpp); a scan
    // of ranges forced onto them reads the same packed blocks.
    if (forced == HammingPath::dense) return HammingPath::panel;
    if (forced != HammingPath::automatic) return forced;
    return nq >= k.hamming_panel_min_queries(stride) ? HammingPath::panel : HammingPath::stream;
  }
  void prepare_queries(const Elem* queries, std::size_t nq, Workspace& w) const {
    if (path(nq) != HammingPath::panel) return;
    const std::size_t nw = words();
    w.qwords.assign(nq * nw, 0);
    // The same little-endian words as the pack, zero past the code's bytes.
    for (std::size_t q = 0; q < nq; ++q)
      std::memcpy(w.qwords.data() + q * nw, queries + q * stride, stride);
  }
  Block prepare_block(const Elem* rows, std::size_t n, std::size_t nq, Workspace& w) const {
    if (path(nq) != HammingPath::panel) return {rows, nullptr, nullptr};
    const std::size_t need = (n + kCodeGroup - 1) / kCodeGroup * kCodeGroup * words();
    if (w.panel.size() < need) w.panel.resize(need);
    k.hamming_pack(rows, n, stride, w.panel.data());
    return {rows, w.panel.data(), w.qwords.data()};
  }
  std::size_t run(const Elem* queries, std::size_t t, std::size_t nt, const Block& b,
                  std::size_t n, const Order::Value* thresh, Hit* hits) const {
    if (b.panel)
      return k.hamming_scan_packed(b.qwords + t * words(), nt, b.panel, n, words(), thresh, hits);
    return k.hamming_scan(queries + t * stride, nt, b.rows, n, stride, thresh, hits);
  }
  static Order::Value value(const Hit& h) { return h.distance; }
  // Distances are integers: "at most d" is "below d + 1".
  static Order::Value ceiling_from(Order::Value d) { return d + 1; }
  static constexpr bool kSampleCeiling = true;
  Selector selector(std::size_t cap) const {
    if constexpr (std::is_base_of_v<CountingSelector, Selector>)
      return Selector(cap, static_cast<std::uint32_t>(stride * 8));
    else
      return Selector(cap);
  }
};

template <class S>
using Value = typename S::Order::Value;

// A selector for rows offered out of id order (the caller's ids, the inverted lists): a
// row that ties the k-th value can still win by a smaller id, so the kernels' strict
// threshold is loosened by one step to admit ties, which the selector then orders by id.
template <class Sel>
struct AdmitTies : Sel {
  using Sel::Sel;
  auto threshold() {
    const auto t = Sel::threshold();
    using V = std::remove_const_t<decltype(t)>;
    if constexpr (std::is_floating_point_v<V>)
      return std::isnan(t) ? t : std::nextafter(t, -std::numeric_limits<V>::infinity());
    else
      return t == std::numeric_limits<V>::max() ? t : static_cast<V>(t + 1);
  }
};

// The threshold to hand a kernel: the selector's own, or the ceiling where that is tighter.
template <class S>
Value<S> tighter(Value<S> own, const std::vector<Value<S>>& ceiling, std::size_t q) {
  if (ceiling.empty()) return own;
  using O = typename S::Order;
  return O::better(ceiling[q], 0, own, 0) ? ceiling[q] : own;
}

// One thread's buffers for scan_range, kept from one call to the next: a batch over a
// small database makes many short calls, and a fresh hit buffer per call (over a
// megabyte, from mmap) cost more than scanning the rows.
template <class S>
struct ScanBuffers {
  std::vector<Value<S>> thresh;
  std::unique_ptr<typename S::Hit[]> hits;  // uninitialised: zeroing it cost more than the scan
  std::size_t hit_capacity = 0;
  typename S::Workspace workspace;

  typename S::Hit* hit_room(std::size_t need) {
    if (need > hit_capacity) {
      hits.reset(new typename S::Hit[need]);
      hit_capacity = need;
    }
    return hits.get();
  }
};

// Offers rows [r0, r1) to the selectors of queries [0, nq). A row must also beat
// ceiling[q] when ceilings are given. Row r goes to the selectors as id row_ids[r], or as
// r itself when row_ids is null; when allow is given, only if bit allow_from + r of it is
// set (a filtered search: the kernels still compare every row, which costs less than
// gathering the allowed ones unless they are very few, but only allowed rows lower a
// threshold; allow_from places a range that starts inside a larger bitmap).
template <class S>
void scan_range(const S& s, const typename S::Elem* rows, std::size_t r0, std::size_t r1,
                const typename S::Elem* queries, std::size_t nq, typename S::Selector* heaps,
                const std::vector<Value<S>>& ceiling, ScanBuffers<S>& buf,
                const std::int64_t* row_ids = nullptr, const std::uint64_t* allow = nullptr,
                std::size_t allow_from = 0) {
  const std::size_t block = full_block_rows(S::kKind, s.row_bytes(), nq);
  std::vector<Value<S>>& thresh = buf.thresh;
  thresh.resize(nq);
  for (std::size_t i = 0; i < nq; ++i) thresh[i] = tighter<S>(heaps[i].threshold(), ceiling, i);
  // Room for the worst case of one kernel call on this range.
  typename S::Hit* const hits = buf.hit_room(std::min(S::kTile, nq) * std::min(block, r1 - r0));
  s.prepare_queries(queries, nq, buf.workspace);
  // Once every selector is full (a range scanned after others, as an inverted list is),
  // the thresholds are already real and the blocks need not start small.
  const bool filled = std::all_of(heaps, heaps + nq, [](const auto& h) { return h.full(); });
  for (std::size_t b = r0, step = filled ? block : first_block_rows(S::kKind, block); b < r1;
       b += step, step = next_block_rows(step, block)) {
    const std::size_t nb = std::min(step, r1 - b);
    const typename S::Block blk = s.prepare_block(rows + b * s.stride, nb, nq, buf.workspace);
    for (std::size_t t = 0; t < nq; t += S::kTile) {
      const std::size_t nt = std::min(S::kTile, nq - t);
      const std::size_t h = s.run(queries, t, nt, blk, nb, thresh.data() + t, hits);
      for (std::size_t i = 0; i < h; ++i) {
        const std::size_t r = b + hits[i].row;
        if (allow && !(allow[(allow_from + r) / 64] >> ((allow_from + r) % 64) & 1)) continue;
        heaps[t + hits[i].query].push(S::value(hits[i]),
                                      row_ids ? row_ids[r] : static_cast<std::int64_t>(r));
      }
      for (std::size_t j = 0; j < nt; ++j)
        thresh[t + j] = tighter<S>(heaps[t + j].threshold(), ceiling, t + j);
    }
  }
}

// Makes sel hold m empty selectors of capacity cap for the scan s, reusing (reset) the
// ones it already holds: a thread keeps one set from one chunk or part to the next.
template <class S>
void fresh_selectors(const S& s, std::vector<typename S::Selector>& sel, std::size_t m,
                     std::size_t cap) {
  for (auto& x : sel) x.reset();
  while (sel.size() < m) sel.push_back(s.selector(cap));
}

template <class Order>
void write_sorted(const Entry<Order>* e, std::size_t m, std::size_t k,
                  typename Order::Value sentinel, typename Order::Value* out_v,
                  std::int64_t* out_id) {
  for (std::size_t i = 0; i < m; ++i) {
    out_v[i] = e[i].value;
    out_id[i] = e[i].id;
  }
  for (std::size_t i = m; i < k; ++i) {
    out_v[i] = sentinel;
    out_id[i] = -1;
  }
}

// Merges per-part top lists into the outputs: part p holds, for query q, sizes[p * nq + q]
// entries at storage[(p * nq + q) * cap], sorted best-first, over disjoint rows. Each
// query gets the best min(cap, total) of its parts, padded to k.
template <class Order>
void merge_parts(const std::vector<Entry<Order>>& storage, const std::vector<std::size_t>& sizes,
                 std::size_t parts, std::size_t nq, std::size_t cap, std::size_t k,
                 typename Order::Value sentinel, typename Order::Value* out_v,
                 std::int64_t* out_id) {
  std::vector<Entry<Order>> merged;
  merged.reserve(parts * cap);
  for (std::size_t q = 0; q < nq; ++q) {
    merged.clear();
    for (std::size_t p = 0; p < parts; ++p) {
      const Entry<Order>* first = storage.data() + (p * nq + q) * cap;
      merged.insert(merged.end(), first, first + sizes[p * nq + q]);
    }
    const std::size_t m = std::min(cap, merged.size());
    std::partial_sort(merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(m), merged.end());
    write_sorted(merged.data(), m, k, sentinel, out_v + q * k, out_id + q * k);
  }
}

}  // namespace drivers
}  // namespace cofisearch
