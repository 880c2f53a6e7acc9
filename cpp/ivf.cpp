#include "ivf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "pool.h"
#include "scan.h"
#include "search.h"
#include "simd.h"
#include "topk.h"

namespace cofisearch {
namespace {

using namespace drivers;

// Lists are scanned in list order, so a selector meets ids out of order: its thresholds
// admit ties (AdmitTies, scan.h), which it then orders by id (and trims, see topk.h).

// The queries that probe each list, list-major: a counting sort of the (query, list)
// pairs. List l's queries are query[begin[l] .. end[l]), ascending; slot[i] is where the
// pair of query[i] sits in probes (q * nprobe + j, its first j), for per-pair inputs.
struct Buckets {
  std::vector<std::size_t> begin, end, query, slot;
};

// Only the columns [first[q], last[q]) of each query's row count (all of them when first
// and last are null), less the lists the query named before first[q] (scanned already).
Buckets invert(const std::int64_t* probes, std::size_t nprobe, std::size_t nq, std::size_t nlist,
               const std::size_t* first = nullptr, const std::size_t* last = nullptr) {
  const auto from = [&](std::size_t q) { return first ? first[q] : 0; };
  const auto to = [&](std::size_t q) { return last ? last[q] : nprobe; };
  const auto seen = [&](std::size_t q, std::int64_t l) {
    return std::find(probes + q * nprobe, probes + q * nprobe + from(q), l) != probes + q * nprobe + from(q);
  };
  Buckets b;
  b.begin.assign(nlist + 1, 0);
  for (std::size_t q = 0; q < nq; ++q)
    for (std::size_t j = from(q); j < to(q); ++j)
      if (probes[q * nprobe + j] >= 0) ++b.begin[static_cast<std::size_t>(probes[q * nprobe + j]) + 1];
  for (std::size_t l = 0; l < nlist; ++l) b.begin[l + 1] += b.begin[l];
  b.query.resize(b.begin[nlist]);
  b.slot.resize(b.begin[nlist]);
  b.end.assign(b.begin.begin(), b.begin.end() - 1);
  for (std::size_t q = 0; q < nq; ++q)
    for (std::size_t j = from(q); j < to(q); ++j) {
      const std::int64_t l = probes[q * nprobe + j];
      if (l < 0 || seen(q, l)) continue;
      std::size_t& e = b.end[static_cast<std::size_t>(l)];
      // Queries arrive in order, so a list named twice by q has q as its last entry.
      if (e > b.begin[static_cast<std::size_t>(l)] && b.query[e - 1] == q) continue;
      b.slot[e] = q * nprobe + j;
      b.query[e++] = q;
    }
  return b;
}

// The best `cap` entries offered, by Order (ties by the smaller id), collected unsorted:
// an entry better than the cut (the cap-th best when the buffer last filled) is appended,
// and a full buffer is cut back to its best cap by nth_element. Each
// offer costs O(1) amortised where a heap's sift costs a walk of log(cap) levels: the
// asymmetric screen keeps hundreds of candidates, most hits of a probed list are
// offered while the threshold still rises, and with a heap those insertions took as long
// as the kernels (0.18 of a single query's time at 200k items, 244 candidates). The cut
// moves only when the buffer fills, so the kernels' threshold is looser than a heap's
// (more hits, and nth_element is now most of the hit path); the result is the same exact
// top-cap, at 10% less CPU time than the heap's for a single query and 13% less for a
// batch of 1,000 (200k items, 64 of 1024 lists probed, 244 candidates).
template <class Order>
class BufferedSelector {
 public:
  using Value = typename Order::Value;
  using E = Entry<Order>;

  explicit BufferedSelector(std::size_t capacity) : cap_(capacity) {}

  void push(Value v, std::int64_t id) {
    if (cap_ == 0 || (cut_ && !Order::better(v, id, cut_value_, cut_id_))) return;
    data_.push_back({v, id});
    if (data_.size() == cap_ + std::max<std::size_t>(cap_ / 2, 16)) cut();
  }

  Value threshold() const { return cut_ ? cut_value_ : Order::open(); }
  bool full() const { return cut_; }

  std::size_t take(E* out) {
    const std::size_t m = std::min(cap_, data_.size());
    const auto end = data_.begin() + static_cast<std::ptrdiff_t>(m);
    // Cheaper than partial_sort, whose heap passes took 3-6% of a search.
    if (m < data_.size()) std::nth_element(data_.begin(), end - 1, data_.end());
    std::sort(data_.begin(), end);
    std::copy(data_.begin(), data_.begin() + static_cast<std::ptrdiff_t>(m), out);
    return m;
  }

  void reset() {
    data_.clear();
    cut_ = false;
  }

 private:
  // Keeps the best cap, the cap-th best (the cut) among them. The cut is also kept beside
  // the buffer: a batch's selectors sit side by side while their buffers are scattered,
  // and reading the cut from the buffer cost a cache miss for most offers.
  void cut() {
    const auto last = data_.begin() + static_cast<std::ptrdiff_t>(cap_ - 1);
    std::nth_element(data_.begin(), last, data_.end());
    data_.resize(cap_);
    cut_ = true;
    cut_value_ = last->value;
    cut_id_ = last->id;
  }

  std::vector<E> data_;
  std::size_t cap_;
  bool cut_ = false;
  Value cut_value_{};
  std::int64_t cut_id_ = 0;
};

// Bytes at the start of a list requested before it is scanned. A few queries stream
// each probed list from memory once; a list's first kilobytes, before the hardware and the
// kernels' prefetches run ahead, were demand misses, which for short lists were most of
// the list (60k items in 983 lists, 128 probed: 1 us a list of fixed cost).
constexpr std::size_t kWarmBytes = 4096;

// Requests the first kWarmBytes of n rows of row_bytes bytes from p.
void warm_rows(const void* p, std::size_t n, std::size_t row_bytes) {
  const auto* c = static_cast<const char*>(p);
  for (std::size_t b = 0; b < std::min(kWarmBytes, n * row_bytes); b += 64) __builtin_prefetch(c + b);
}

// Bytes of lists a thread scans for a few queries, below which they are not split.
constexpr std::size_t kMinListWork = std::size_t(8) << 20;

// Hamming queries: the code itself.
struct CodeGather {
  const std::uint8_t* queries;
  std::size_t bytes;
  void operator()(std::uint8_t* dst, std::size_t q, std::size_t) const {
    std::memcpy(dst, queries + q * bytes, bytes);
  }
};

// What scan_range needs to run the asymmetric kernels (asym.h) over a list. A query's
// record is its planes (qbits codes of `stride` bytes) then four floats: scale, lo2,
// shift and the bias of the list it is scanned in.
struct AsymScan {
  using Order = ScoreOrder;
  using Selector = AdmitTies<BufferedSelector<ScoreOrder>>;
  using Elem = std::uint8_t;
  using Hit = ScoreHit;
  static constexpr std::size_t kTile = kMaxQueryTile;
  static constexpr ScanKind kKind = ScanKind::dot;
  const KernelSet& k;  // its code pack builds the panels
  const AsymKernelSet& a;
  const std::uint8_t* codes;  // row 0 of the lists' buffer, which factors parallels
  const float* factors;
  std::size_t stride;  // bytes per code
  std::size_t qbits;
  std::size_t words() const { return (stride + 7) / 8; }
  std::size_t row_bytes() const { return stride + sizeof(float); }
  std::size_t record_bytes() const { return qbits * stride + 4 * sizeof(float); }

  struct Block {
    const std::uint64_t* panel;
    const float* factors;
    const std::uint64_t* qwords;
    const float* qconst;
    const float* bias;
  };
  struct Workspace {
    std::vector<std::uint64_t> qwords, panel;
    std::vector<float> qconst, bias;
    // The list being scanned, when its panel is stored: its first row and its groups.
    const Elem* list_rows = nullptr;
    const std::uint64_t* list_panel = nullptr;
  };
  void prepare_queries(const Elem* records, std::size_t nq, Workspace& w) const {
    const std::size_t nw = words();
    w.qwords.assign(nq * qbits * nw, 0);
    w.qconst.resize(3 * nq);
    w.bias.resize(nq);
    for (std::size_t q = 0; q < nq; ++q) {
      const Elem* r = records + q * record_bytes();
      // The same little-endian words as the code pack, zero past the code's bytes.
      for (std::size_t j = 0; j < qbits; ++j)
        std::memcpy(w.qwords.data() + (q * qbits + j) * nw, r + j * stride, stride);
      std::memcpy(w.qconst.data() + 3 * q, r + qbits * stride, 3 * sizeof(float));
      std::memcpy(w.bias.data() + q, r + qbits * stride + 3 * sizeof(float), sizeof(float));
    }
  }
  Block prepare_block(const Elem* rows, std::size_t n, std::size_t, Workspace& w) const {
    const float* f = factors + static_cast<std::size_t>(rows - codes) / stride;
    // Blocks start at multiples of kCodeGroup rows into the list (scan.h's block sizes
    // are), so a block of a stored list is whole groups of its panel.
    const auto offset = static_cast<std::size_t>(rows - w.list_rows) / stride;
    if (w.list_panel && offset % kCodeGroup == 0)
      return {w.list_panel + offset * words(), f, w.qwords.data(), w.qconst.data(), w.bias.data()};
    const std::size_t need = (n + kCodeGroup - 1) / kCodeGroup * kCodeGroup * words();
    if (w.panel.size() < need) w.panel.resize(need);
    k.hamming_pack(rows, n, stride, w.panel.data());
    return {w.panel.data(), f, w.qwords.data(), w.qconst.data(), w.bias.data()};
  }
  const AsymPanel& stored;
  // List l's groups in the stored panel, or null when none is stored.
  const std::uint64_t* stored_list(std::size_t l) const {
    return stored.panel ? stored.panel + static_cast<std::size_t>(stored.start[l]) * words() * kCodeGroup
                        : nullptr;
  }
  void enter_list(const InvertedLists& lists, std::size_t l, Workspace& w) const {
    w.list_rows = lists.codes + static_cast<std::size_t>(lists.start[l]) * stride;
    w.list_panel = stored_list(l);
  }
  // Requests the start of list l's codes (the stored panel's groups, or its rows) and
  // factors.
  void warm(const InvertedLists& lists, std::size_t l) const {
    const auto start = static_cast<std::size_t>(lists.start[l]);
    const auto n = static_cast<std::size_t>(lists.size[l]);
    const std::uint64_t* panel = stored_list(l);
    warm_rows(panel ? static_cast<const void*>(panel) : codes + start * stride, n, stride);
    warm_rows(factors + start, n, sizeof(float));
  }
  std::size_t run(const Elem*, std::size_t t, std::size_t nt, const Block& b, std::size_t n,
                  const float* thresh, Hit* hits) const {
    return a.scan(b.qwords + t * qbits * words(), qbits, b.qconst + 3 * t, b.bias + t, nt, b.panel,
                  b.factors, n, words(), thresh, hits);
  }
  static float value(const Hit& h) { return h.score; }
  Selector selector(std::size_t cap) const { return Selector(cap); }
};

// Asymmetric queries: the planes, the constants, and the bias of the probed list.
struct AsymGather {
  const AsymQueries& queries;
  std::size_t stride;
  std::size_t bytes;
  void operator()(std::uint8_t* dst, std::size_t q, std::size_t slot) const {
    const std::size_t planes = queries.qbits * stride;
    std::memcpy(dst, queries.planes + q * planes, planes);
    std::memcpy(dst + planes, queries.consts + 3 * q, 3 * sizeof(float));
    std::memcpy(dst + planes + 3 * sizeof(float), queries.bias + slot, sizeof(float));
  }
};

// Scans with nothing stored per list (Hamming) need no notice of the list they scan.
template <class S>
void enter_list(const S&, const InvertedLists&, std::size_t, typename S::Workspace&) {}

// A list's first ids and codes (for the asymmetric screen, its stored panel's groups and
// its factors), requested while the list before it is scanned: the kernels' own
// prefetch does not reach them before they run.
template <class S>
void warm_list(const S& s, const InvertedLists& lists, std::size_t l) {
  const auto start = static_cast<std::size_t>(lists.start[l]);
  const auto n = static_cast<std::size_t>(lists.size[l]);
  warm_rows(lists.ids + start, n, sizeof(std::int64_t));
  if constexpr (std::is_same_v<S, AsymScan>)
    s.warm(lists, l);
  else
    warm_rows(lists.codes + start * lists.nbytes, n, lists.nbytes);
}
inline void enter_list(const AsymScan& s, const InvertedLists& lists, std::size_t l,
                       AsymScan::Workspace& w) {
  s.enter_list(lists, l, w);
}

// Buffers one thread reuses from list to list.
template <class S>
struct Scratch {
  std::vector<std::uint8_t> queries;
  std::vector<typename S::Selector> selectors;
  ScanBuffers<S> buffers;
};

// Offers list l's items to the selectors sel[q - base] of the m queries qs, whose
// records `gather` writes (slots: their places in probes).
template <class S, class Gather>
void scan_list(const S& s, const InvertedLists& lists, std::size_t l, const std::size_t* qs,
               const std::size_t* slots, std::size_t m, const Gather& gather,
               typename S::Selector* sel, std::size_t base, Scratch<S>& w) {
  const auto start = static_cast<std::size_t>(lists.start[l]);
  const auto n = static_cast<std::size_t>(lists.size[l]);
  if (n == 0 || m == 0) return;
  // The kernels take a tile of consecutive queries and consecutive selectors: the list's
  // queries are gathered, and their selectors moved in and back (a move, not a copy).
  w.queries.resize(m * gather.bytes);
  w.selectors.clear();
  for (std::size_t j = 0; j < m; ++j) {
    gather(w.queries.data() + j * gather.bytes, qs[j], slots[j]);
    w.selectors.push_back(std::move(sel[qs[j] - base]));
  }
  enter_list(s, lists, l, w.buffers.workspace);
  scan_range(s, lists.codes + start * lists.nbytes, 0, n, w.queries.data(), m, w.selectors.data(),
             {}, w.buffers, lists.ids + start, lists.allow, start);
  for (std::size_t j = 0; j < m; ++j) sel[qs[j] - base] = std::move(w.selectors[j]);
}

template <class S, class Gather>
void probe_search(const S& s, const InvertedLists& lists, const Gather& queries, std::size_t nq,
                  const std::int64_t* probes, std::size_t nprobe, std::size_t k, int nthreads,
                  Value<S> sentinel, Value<S>* out_d, std::int64_t* out_id) {
  using E = Entry<typename S::Order>;
  using Selector = typename S::Selector;
  if (nq == 0) return;
  std::size_t total = 0;
  for (std::size_t l = 0; l < lists.nlist; ++l) total += static_cast<std::size_t>(lists.size[l]);
  const std::size_t cap = std::min(k, total);
  if (cap == 0) {
    std::fill(out_d, out_d + nq * k, sentinel);
    std::fill(out_id, out_id + nq * k, -1);
    return;
  }
  const Buckets all = invert(probes, nprobe, nq, lists.nlist);
  // Bytes scanned per probed list (its rows once per query probing it), for the split.
  std::vector<std::size_t> active;
  std::size_t work = 0;
  for (std::size_t l = 0; l < lists.nlist; ++l) {
    const std::size_t m = all.end[l] - all.begin[l];
    if (m == 0 || lists.size[l] == 0) continue;
    active.push_back(l);
    work += static_cast<std::size_t>(lists.size[l]) * m * lists.nbytes;
  }
  const int wanted = threads_for(nthreads, work, std::max(nq, active.size()));
  const auto size_of = [&](std::int64_t l) { return l < 0 ? 0 : static_cast<std::size_t>(lists.size[l]); };

  if (wanted <= 1 || nq >= 4 * static_cast<std::size_t>(wanted)) {
    // Two passes, list-major each: first every query's nearest lists (its first probes)
    // until they hold 2 cap items, then the rest. A selector that has met the items nearest
    // to its query holds a threshold that admits few of the others: scanned in list order
    // alone, the hits (each a heap insertion and a random read of its id) cost twice the
    // kernels' time.
    std::vector<std::size_t> seed_end(nq), row_end(nq, nprobe);
    for (std::size_t q = 0; q < nq; ++q) {
      std::size_t j = 0;
      for (std::size_t held = 0; j < nprobe && held < 2 * cap; ++j) held += size_of(probes[q * nprobe + j]);
      seed_end[q] = j;
    }
    const Buckets seed = invert(probes, nprobe, nq, lists.nlist, nullptr, seed_end.data());
    const Buckets rest = invert(probes, nprobe, nq, lists.nlist, seed_end.data(), row_end.data());
    const int T = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(wanted), nq));
    run_parallel(T, [&](int t) {
      const std::size_t q0 = nq * static_cast<std::size_t>(t) / static_cast<std::size_t>(T);
      const std::size_t q1 = nq * static_cast<std::size_t>(t + 1) / static_cast<std::size_t>(T);
      std::vector<Selector> sel;
      fresh_selectors(s, sel, q1 - q0, cap);
      Scratch<S> w;
      for (const Buckets* b : {&seed, &rest}) {
        // A list's queries ascend, so this thread's are one run of them.
        for (std::size_t l : active) {
          const std::size_t* first = b->query.data() + b->begin[l];
          const std::size_t* last = b->query.data() + b->end[l];
          const std::size_t* mine = std::lower_bound(first, last, q0);
          scan_list(s, lists, l, mine, b->slot.data() + (mine - b->query.data()),
                    static_cast<std::size_t>(std::lower_bound(mine, last, q1) - mine), queries,
                    sel.data(), q0, w);
        }
      }
      std::vector<E> best(cap);
      for (std::size_t q = 0; q < q1 - q0; ++q) {
        const std::size_t m = sel[q].take(best.data());
        write_sorted(best.data(), m, k, sentinel, out_d + (q0 + q) * k, out_id + (q0 + q) * k);
      }
    });
    return;
  }

  // Few queries: the probed lists are dealt to the threads, each list to the one with the
  // least work so far, in the order the queries probe them (a list at its earliest place
  // in any query's row), so that every thread meets the nearest lists first and its
  // thresholds rise early; the per-thread top lists are then merged. The lists come
  // from memory, scattered, and each thread fills selectors of the whole capacity
  // (hundreds of candidates for the asymmetric screen): only a scan of kMinListWork a
  // thread is split (one query, 64 of 1,024 lists of 1M 512-bit screen codes, 4.3 MB: 2
  // threads took 1.07-1.15x the time of one).
  const int T = threads_for(nthreads, work, active.size(), kMinListWork);
  const auto parts = static_cast<std::size_t>(T);
  std::vector<std::size_t> rank(lists.nlist, nprobe);
  for (std::size_t q = 0; q < nq; ++q)
    for (std::size_t j = 0; j < nprobe; ++j)
      if (probes[q * nprobe + j] >= 0) {
        std::size_t& r = rank[static_cast<std::size_t>(probes[q * nprobe + j])];
        r = std::min(r, j);
      }
  std::stable_sort(active.begin(), active.end(), [&](std::size_t a, std::size_t b) { return rank[a] < rank[b]; });
  std::vector<int> owner(active.size());
  std::vector<std::size_t> load(parts, 0);
  for (std::size_t a = 0; a < active.size(); ++a) {
    const auto t = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[a] = static_cast<int>(t);
    load[t] += size_of(static_cast<std::int64_t>(active[a])) * (all.end[active[a]] - all.begin[active[a]]);
  }
  std::vector<E> storage(parts * nq * cap);
  std::vector<std::size_t> sizes(parts * nq);
  run_parallel(T, [&](int t) {
    std::vector<Selector> sel;
    fresh_selectors(s, sel, nq, cap);
    Scratch<S> w;
    const auto next_owned = [&](std::size_t from) {
      while (from < active.size() && owner[from] != t) ++from;
      return from;
    };
    std::size_t a = next_owned(0);
    if (a < active.size()) warm_list(s, lists, active[a]);
    while (a < active.size()) {
      const std::size_t l = active[a];
      a = next_owned(a + 1);
      if (a < active.size()) warm_list(s, lists, active[a]);
      scan_list(s, lists, l, all.query.data() + all.begin[l], all.slot.data() + all.begin[l],
                all.end[l] - all.begin[l], queries, sel.data(), 0, w);
    }
    const auto p = static_cast<std::size_t>(t);
    for (std::size_t q = 0; q < nq; ++q)
      sizes[p * nq + q] = sel[q].take(storage.data() + (p * nq + q) * cap);
  });
  merge_parts(storage, sizes, parts, nq, cap, k, sentinel, out_d, out_id);
}

}  // namespace

bool quantize_queries(const float* rotated, std::size_t nq, std::size_t nbits, std::size_t qbits,
                      std::uint8_t* planes, float* consts) {
  const auto top = static_cast<float>((1u << qbits) - 1);
  const std::size_t nbytes = nbits / 8;
  std::vector<std::uint8_t> u(nbits);
  for (std::size_t q = 0; q < nq; ++q) {
    const float* w = rotated + q * nbits;
    float lo = w[0], hi = w[0];
    for (std::size_t i = 0; i < nbits; ++i) {
      if (!std::isfinite(w[i])) return false;
      lo = std::min(lo, w[i]);
      hi = std::max(hi, w[i]);
    }
    const float span = hi - lo;
    const float delta = span > 0 ? span / top : 1.0f;
    std::uint32_t sum = 0;
    for (std::size_t i = 0; i < nbits; ++i) {
      // (w - lo) is never negative, so only the top needs a clip; nearbyint rounds ties
      // to even in the default rounding mode, as numpy.rint does.
      const float v = std::min(std::nearbyint((w[i] - lo) / delta), top);
      u[i] = static_cast<std::uint8_t>(v);
      sum += u[i];
    }
    std::uint8_t* out = planes + q * qbits * nbytes;
    for (std::size_t j = 0; j < qbits; ++j)
      for (std::size_t b = 0; b < nbytes; ++b) {
        std::uint8_t byte = 0;
        for (std::size_t i = 0; i < 8; ++i) byte = static_cast<std::uint8_t>(byte << 1 | (u[b * 8 + i] >> j & 1));
        out[j * nbytes + b] = byte;
      }
    // The sum is below 2^24 (8,192 dimensions of at most 255), so exact as a float.
    const float whole = static_cast<float>(nbits) * lo;
    const float rest = delta * static_cast<float>(sum);
    consts[3 * q] = 2.0f * delta;
    consts[3 * q + 1] = 2.0f * lo;
    consts[3 * q + 2] = -(whole + rest);
  }
  return true;
}

void ivf_hamming_search(const InvertedLists& lists, const std::uint8_t* queries, std::size_t nq,
                        const std::int64_t* probes, std::size_t nprobe, std::size_t k,
                        int nthreads, std::int32_t* distances, std::int64_t* ids) {
  const KernelSet& kernels = kernels_for(current_simd_level());
  const HammingPath forced = hamming_path_override();
  // As in hamming_search: distances fit in int32, and int32/uint32 may alias.
  auto* dist = reinterpret_cast<std::uint32_t*>(distances);
  const auto sentinel = static_cast<std::uint32_t>(kHammingSentinel);
  const CodeGather gather{queries, lists.nbytes};
  if (lists.nbytes * 8 <= kMaxCountingBits)
    probe_search(HammingScan<AdmitTies<CountingSelector>>{kernels, lists.nbytes, forced}, lists, gather, nq,
                 probes, nprobe, k, nthreads, sentinel, dist, ids);
  else
    probe_search(HammingScan<AdmitTies<HeapSelector<HammingOrder>>>{kernels, lists.nbytes, forced}, lists,
                 gather, nq, probes, nprobe, k, nthreads, sentinel, dist, ids);
}

void ivf_asym_search(const InvertedLists& lists, const float* factors, const AsymQueries& queries,
                     std::size_t nq, const std::int64_t* probes, std::size_t nprobe, std::size_t k,
                     int nthreads, float* scores, std::int64_t* ids, const AsymPanel& panel) {
  const SimdLevel level = current_simd_level();
  const AsymScan scan{kernels_for(level), asym_kernels_for(level), lists.codes, factors,
                      lists.nbytes, queries.qbits, panel};
  const AsymGather gather{queries, lists.nbytes, scan.record_bytes()};
  probe_search(scan, lists, gather, nq, probes, nprobe, k, nthreads, kScoreSentinel, scores, ids);
}

bool ivf_asym_query(const InvertedLists& lists, const float* factors, const AsymRouting& routing,
                    const float* vectors, std::size_t nq, std::size_t qbits, std::size_t nprobe,
                    std::size_t k, int nthreads, float* scores, std::int64_t* ids,
                    const AsymPanel& panel) {
  // A batch is searched in passes whose rotated and quantised queries, routes and probes
  // take at most kQueryPassBytes: a million queries at 768 bits would hold 3 GB of them.
  const std::size_t per_query = routing.bits * sizeof(float) + qbits * lists.nbytes + 3 * sizeof(float) +
                                nprobe * (sizeof(float) + sizeof(std::int64_t));
  const std::size_t pass = std::max<std::size_t>(1, kQueryPassBytes / per_query);
  for (std::size_t q0 = 0; q0 < nq; q0 += pass) {
    const std::size_t m = std::min(pass, nq - q0);
    const float* v = vectors + q0 * routing.dim;
    std::vector<float> route(m * nprobe);
    std::vector<std::int64_t> probes(m * nprobe);
    dot_route(routing.centroids, routing.centroid_panel, routing.nlist, routing.dim, routing.row_norm,
              v, m, nprobe, nthreads, route.data(), probes.data());
    std::vector<float> rotated(m * routing.bits);
    dot_scores_packed(routing.rotation_panel, routing.bits, routing.dim, v, m, nthreads, rotated.data());
    std::vector<std::uint8_t> planes(m * qbits * lists.nbytes);
    std::vector<float> consts(3 * m);
    if (!quantize_queries(rotated.data(), m, routing.bits, qbits, planes.data(), consts.data())) return false;
    for (std::size_t i = 0; i < m * nprobe; ++i)
      route[i] = probes[i] >= 0 ? routing.scale[probes[i]] * route[i] : 0.0f;
    ivf_asym_search(lists, factors, {planes.data(), qbits, consts.data(), route.data()}, m,
                    probes.data(), nprobe, k, nthreads, scores + q0 * k, ids + q0 * k, panel);
  }
  return true;
}

}  // namespace cofisearch
