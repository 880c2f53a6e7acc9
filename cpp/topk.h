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

  // Moves the kept entries, best first, to `out`; returns how many. The selector is
  // unusable afterwards.
  std::size_t take(E* out) {
    std::sort(data_.begin(), data_.begin() + static_cast<std::ptrdiff_t>(size_));
    std::copy(data_.begin(), data_.begin() + static_cast<std::ptrdiff_t>(size_), out);
    return size_;
  }

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
class CountingSelector {
 public:
  using Value = std::uint32_t;
  using E = Entry<HammingOrder>;

  CountingSelector(std::size_t capacity, std::uint32_t max_value)
      : cap_(capacity), hist_(static_cast<std::size_t>(max_value) + 2, 0), limit_(max_value + 1) {}

  void push(Value d, std::int64_t id) {
    if (d >= limit_) return;  // admitted by a threshold that was stale for its block
    entries_.push_back({d, id});
    ++hist_[d];
    ++below_;
  }

  Value threshold() {
    while (below_ - hist_[limit_ - 1] >= cap_) {
      below_ -= hist_[limit_ - 1];
      hist_[limit_ - 1] = 0;
      --limit_;
    }
    if (entries_.size() > 2 * cap_ + 64) compact();
    return below_ >= cap_ ? limit_ - 1 : HammingOrder::open();
  }

  bool full() const { return below_ >= cap_; }

  // Distances are small integers, so the final order comes from a counting sort by
  // distance; only the distance groups that reach the output are then sorted by id
  // (arrival order is nearly ascending, so those sorts are short).
  std::size_t take(E* out) {
    compact();
    const std::size_t m = std::min(cap_, entries_.size());
    std::vector<std::size_t> start(static_cast<std::size_t>(limit_) + 1, 0);
    for (const E& e : entries_) ++start[e.value + 1];
    for (std::size_t d = 1; d < start.size(); ++d) start[d] += start[d - 1];
    std::vector<E> sorted(entries_.size());
    std::vector<std::size_t> next(start.begin(), start.end() - 1);
    for (const E& e : entries_) sorted[next[e.value]++] = e;
    for (std::size_t d = 0; d + 1 < start.size() && start[d] < m; ++d)
      std::sort(sorted.begin() + static_cast<std::ptrdiff_t>(start[d]),
                sorted.begin() + static_cast<std::ptrdiff_t>(start[d + 1]));
    std::copy(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(m), out);
    return m;
  }

 private:
  void compact() {
    const Value limit = limit_;
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [limit](const E& e) { return e.value >= limit; }),
                   entries_.end());
    if (below_ < cap_ || entries_.size() <= 2 * cap_ + 64) return;
    // Entries tied at the k-th distance past the `need` smallest ids can never reach the
    // top k (a tie goes to the smaller id). A driver that offers rows out of id order (the
    // inverted lists) must admit ties, and without this they would pile up.
    const Value last = limit - 1;
    const std::size_t need = cap_ - (below_ - hist_[last]);
    const auto ties = std::partition(entries_.begin(), entries_.end(),
                                     [last](const E& e) { return e.value != last; });
    if (static_cast<std::size_t>(entries_.end() - ties) <= need) return;
    const auto keep = ties + static_cast<std::ptrdiff_t>(need);
    std::nth_element(ties, keep, entries_.end(), [](const E& a, const E& b) { return a.id < b.id; });
    entries_.erase(keep, entries_.end());
    hist_[last] = need;
    below_ = cap_;
  }

  std::size_t cap_;
  std::vector<std::size_t> hist_;
  Value limit_;
  std::size_t below_ = 0;
  std::vector<E> entries_;
};

}  // namespace cofisearch
