// Deterministic top-k selection (layer 3 of STYLE.md).
//
// One bounded heap per query keeps the best `capacity` entries seen so far with the worst
// on top, so the scan can compare against a single threshold. "Best" is a strict total
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

// A max-heap (worst on top) over caller-owned storage of `capacity` entries.
template <class Order>
class TopK {
 public:
  using Value = typename Order::Value;
  using E = Entry<Order>;

  TopK(E* storage, std::size_t capacity) : data_(storage), cap_(capacity) {}

  void push(Value v, std::int64_t id) {
    if (size_ < cap_) {
      data_[size_++] = {v, id};
      std::push_heap(data_, data_ + size_);
    } else if (cap_ > 0 && Order::better(v, id, data_[0].value, data_[0].id)) {
      std::pop_heap(data_, data_ + size_);
      data_[size_ - 1] = {v, id};
      std::push_heap(data_, data_ + size_);
    }
  }

  Value threshold() const { return size_ < cap_ ? Order::open() : data_[0].value; }
  std::size_t size() const { return size_; }
  const E* data() const { return data_; }

  // Sorts best-first in place; the heap is unusable afterwards.
  void sort() { std::sort(data_, data_ + size_); }

 private:
  E* data_;
  std::size_t cap_;
  std::size_t size_ = 0;
};

}  // namespace cofisearch
