// Deterministic top-k selection (layer 3 of STYLE.md).
//
// One selector per query keeps the best `capacity` entries seen so far and hands the scan
// a single threshold that a row must beat to be offered at all. "Best" is a strict total
// order: Hamming distance ascending or score descending, then the smaller id. Because the
// order is total, the result does not depend on the order in which rows were offered,
// which is what makes results equal across SIMD levels, block sizes and thread counts.
// Scores that are NaN rank below every number, so they can never displace a real score.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace cofisearch {

struct HammingOrder {
  using Value = std::uint32_t;
  static bool better(Value a, std::int64_t ia, Value b, std::int64_t ib) {
    return a < b || (a == b && ia < ib);
  }
  // The threshold handed to a kernel while the heap is still filling: admits everything.
  static Value open() { return std::numeric_limits<Value>::max(); }
};

struct ScoreOrder {
  using Value = float;
  static bool better(Value a, std::int64_t ia, Value b, std::int64_t ib) {
    const bool na = std::isnan(a), nb = std::isnan(b);
    if (na || nb) return na == nb ? ia < ib : nb;
    return a > b || (a == b && ia < ib);
  }
  static Value open() { return std::numeric_limits<Value>::quiet_NaN(); }
};

template <class Order>
struct Entry {
  typename Order::Value value;
  std::int64_t id;
  bool operator<(const Entry& o) const { return Order::better(value, id, o.value, o.id); }
};

// A max-heap (worst on top) of at most `capacity` entries, for any order.
template <class Order>
class HeapSelector {
 public:
  using Value = typename Order::Value;
  using E = Entry<Order>;

  explicit HeapSelector(std::size_t capacity) : data_(capacity), cap_(capacity) {}

  void push(Value v, std::int64_t id) {
    if (size_ < cap_) {
      sift_up(size_++, {v, id});
    } else if (cap_ > 0 && Order::better(v, id, data_[0].value, data_[0].id)) {
      // Replacing the worst in place and sifting down costs one pass instead of the two
      // of pop_heap + push_heap; this runs for every hit the scan lets through.
      sift_down({v, id});
    }
  }

  Value threshold() const { return size_ < cap_ ? Order::open() : data_[0].value; }
  bool full() const { return size_ == cap_; }

  // Moves the kept entries, best first, to `out`; returns how many. The selector holds
  // nothing usable afterwards until reset().
  std::size_t take(E* out) {
    std::sort(data_.begin(), data_.begin() + static_cast<std::ptrdiff_t>(size_));
    std::copy(data_.begin(), data_.begin() + static_cast<std::ptrdiff_t>(size_), out);
    return size_;
  }

  // Empties the selector for another query, keeping its storage.
  void reset() { size_ = 0; }

  // Bytes the selector holds.
  std::size_t footprint() const { return sizeof(*this) + cap_ * sizeof(E); }

 private:
  // Heap order: a parent is never better than its children (worst entry at the root).
  void sift_up(std::size_t i, E e) {
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!(data_[parent] < e)) break;
      data_[i] = data_[parent];
      i = parent;
    }
    data_[i] = e;
  }

  void sift_down(E e) {
    std::size_t i = 0;
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= size_) break;
      if (child + 1 < size_ && data_[child] < data_[child + 1]) ++child;
      if (!(e < data_[child])) break;
      data_[i] = data_[child];
      i = child;
    }
    data_[i] = e;
  }

  std::vector<E> data_;
  std::size_t cap_;
  std::size_t size_ = 0;
};

// Counting selection for Hamming distances, which are small integers (at most nbits).
//
// Instead of a heap it keeps every admitted (distance, id) in arrival order plus a count
// per distance, and tracks `limit`, the smallest distance bound such that at least
// `capacity` kept entries lie below it. The k-th best distance is then limit - 1, which
// becomes the kernel's strict threshold. Admitting a hit costs an append and an
// increment instead of a heap sift, and entries at or beyond the limit are dropped in
// bulk. The final sort by (distance, id) restores the exact tie-break.
//
// A selector is reused from query to query (reset()): a batch over a small database
// spends more on a fresh selector's allocations than on scanning the rows, so neither
// reset() nor take() allocates once the buffers have grown to their working size.
class CountingSelector {
 public:
  using Value = std::uint32_t;
  using E = Entry<HammingOrder>;

  CountingSelector(std::size_t capacity, std::uint32_t max_value)
      : cap_(capacity), hist_(static_cast<std::size_t>(max_value) + 2, 0),
        max_(max_value), limit_(max_value + 1) {}

  void push(Value d, std::int64_t id) {
    if (d >= limit_) return;  // admitted by a threshold that was stale for its block
    if (used_ == entries_.size()) entries_.resize(2 * used_ + 16);
    // Field by field: a push_back of a whole entry was compiled into two narrow stores
    // and one wide reload, which the processor cannot forward (a stall on every hit).
    E& e = entries_[used_++];
    e.value = d;
    e.id = id;
    ++hist_[d];
    ++below_;
  }

  Value threshold() {
    while (below_ - hist_[limit_ - 1] >= cap_) {
      below_ -= hist_[limit_ - 1];
      hist_[limit_ - 1] = 0;
      --limit_;
    }
    if (used_ > 2 * cap_ + 64) compact();
    return below_ >= cap_ ? limit_ - 1 : HammingOrder::open();
  }

  bool full() const { return below_ >= cap_; }

  // Distances are small integers, so the final order comes from a counting sort by
  // distance on the counts already kept; only the last distance that reaches the output
  // is cut by id, and each distance's group is put in id order (arrival order is
  // ascending in practice, so that is a check). The selector holds nothing usable
  // afterwards until reset().
  std::size_t take(E* out) {
    // hist_ counts exactly the below_ entries under limit_; the rest are skipped below.
    const std::size_t m = std::min(cap_, below_);
    if (m == 0) return 0;
    // The distance `last` whose group is cut, and each shorter distance's output slot.
    start_.resize(static_cast<std::size_t>(limit_) + 1);
    std::size_t before = 0;
    Value last = 0;
    for (;; ++last) {
      start_[last] = before;
      if (before + hist_[last] >= m) break;
      before += hist_[last];
    }
    ties_.clear();
    for (std::size_t i = 0; i < used_; ++i) {
      const E& e = entries_[i];
      if (e.value < last)
        out[start_[e.value]++] = e;
      else if (e.value == last)
        ties_.push_back(e);
    }
    // start_[d] is now the end of group d; the groups tile [0, before).
    for (std::size_t d = 0, begin = 0; d < last; begin = start_[d++]) sort_group(out + begin, out + start_[d]);
    const std::size_t need = m - before;
    if (!std::is_sorted(ties_.begin(), ties_.end()))
      std::partial_sort(ties_.begin(), ties_.begin() + static_cast<std::ptrdiff_t>(need), ties_.end());
    std::copy_n(ties_.begin(), need, out + before);
    return m;
  }

  // Empties the selector for another query, keeping its storage. Counts at and beyond
  // limit_ are already zero.
  void reset() {
    std::fill(hist_.begin(), hist_.begin() + static_cast<std::ptrdiff_t>(limit_), 0);
    limit_ = max_ + 1;
    below_ = 0;
    used_ = 0;
  }

  // Bytes the selector holds at its working size: entries are compacted once they pass
  // 2 * capacity + 64, and take() needs a counter per distance and room for the ties.
  std::size_t footprint() const {
    return sizeof(*this) + 2 * hist_.size() * sizeof(std::size_t) + (3 * cap_ + 64) * sizeof(E);
  }

 private:
  static void sort_group(E* first, E* last) {
    if (!std::is_sorted(first, last)) std::sort(first, last);
  }

  void compact() {
    const Value limit = limit_;
    const auto begin = entries_.begin();
    const auto end = std::remove_if(begin, begin + static_cast<std::ptrdiff_t>(used_),
                                    [limit](const E& e) { return e.value >= limit; });
    used_ = static_cast<std::size_t>(end - begin);
    if (below_ < cap_ || used_ <= 2 * cap_ + 64) return;
    // Entries tied at the k-th distance past the `need` smallest ids can never reach the
    // top k (a tie goes to the smaller id). A driver that offers rows out of id order (the
    // inverted lists) must admit ties, and without this they would pile up.
    const Value last = limit - 1;
    const std::size_t need = cap_ - (below_ - hist_[last]);
    const auto ties = std::partition(begin, end, [last](const E& e) { return e.value != last; });
    if (static_cast<std::size_t>(end - ties) <= need) return;
    const auto keep = ties + static_cast<std::ptrdiff_t>(need);
    std::nth_element(ties, keep, end, [](const E& a, const E& b) { return a.id < b.id; });
    used_ = static_cast<std::size_t>(keep - begin);
    hist_[last] = need;
    below_ = cap_;
  }

  std::size_t cap_;
  std::vector<std::size_t> hist_;
  Value max_;
  Value limit_;
  std::size_t below_ = 0;
  std::vector<E> entries_;  // the first used_ are kept; the rest is room to grow into
  std::size_t used_ = 0;
  std::vector<std::size_t> start_;  // take()'s scratch, kept for the next query
  std::vector<E> ties_;             // likewise
};

}  // namespace cofisearch
