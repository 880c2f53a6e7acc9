#include "ivf.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "pool.h"
#include "scan.h"
#include "search.h"
#include "simd.h"
#include "topk.h"

namespace cofisearch {
namespace {

using namespace drivers;

// Lists are scanned in list order, so a selector meets ids out of order: a row that ties
// the k-th distance can still win by a smaller id. The kernels' strict threshold is raised
// by one to admit ties, which the selector then orders by id (and trims, see topk.h).
template <class Sel>
struct TieAdmitting : Sel {
  using Sel::Sel;
  std::uint32_t threshold() {
    const std::uint32_t t = Sel::threshold();
    return t == HammingOrder::open() ? t : t + 1;
  }
};

// The queries that probe each list, list-major: a counting sort of the (query, list)
// pairs. List l's queries are query[begin[l] .. end[l]), ascending.
struct Buckets {
  std::vector<std::size_t> begin, end, query;
};

Buckets invert(const std::int64_t* probes, std::size_t nprobe, std::size_t nq, std::size_t nlist) {
  Buckets b;
  b.begin.assign(nlist + 1, 0);
  for (std::size_t q = 0; q < nq; ++q)
    for (std::size_t j = 0; j < nprobe; ++j)
      if (probes[q * nprobe + j] >= 0) ++b.begin[static_cast<std::size_t>(probes[q * nprobe + j]) + 1];
  for (std::size_t l = 0; l < nlist; ++l) b.begin[l + 1] += b.begin[l];
  b.query.resize(b.begin[nlist]);
  b.end.assign(b.begin.begin(), b.begin.end() - 1);
  for (std::size_t q = 0; q < nq; ++q)
    for (std::size_t j = 0; j < nprobe; ++j) {
      const std::int64_t l = probes[q * nprobe + j];
      if (l < 0) continue;
      std::size_t& e = b.end[static_cast<std::size_t>(l)];
      // Queries arrive in order, so a list named twice by q has q as its last entry.
      if (e > b.begin[static_cast<std::size_t>(l)] && b.query[e - 1] == q) continue;
      b.query[e++] = q;
    }
  return b;
}

// Buffers one thread reuses from list to list.
template <class S>
struct Scratch {
  std::vector<std::uint8_t> queries;
  std::vector<typename S::Selector> selectors;
  ScanBuffers<S> buffers;
};

// Offers list l's items to the selectors sel[q - base] of the m queries qs.
template <class S>
void scan_list(const S& s, const InvertedLists& lists, std::size_t l, const std::size_t* qs,
               std::size_t m, const std::uint8_t* queries, typename S::Selector* sel,
               std::size_t base, Scratch<S>& w) {
  const auto start = static_cast<std::size_t>(lists.start[l]);
  const auto n = static_cast<std::size_t>(lists.size[l]);
  if (n == 0 || m == 0) return;
  const std::size_t nbytes = lists.nbytes;
  // The kernels take a tile of consecutive queries and consecutive selectors: the list's
  // queries are gathered, and their selectors moved in and back (a move, not a copy).
  w.queries.resize(m * nbytes);
  w.selectors.clear();
  for (std::size_t j = 0; j < m; ++j) {
    std::memcpy(w.queries.data() + j * nbytes, queries + qs[j] * nbytes, nbytes);
    w.selectors.push_back(std::move(sel[qs[j] - base]));
  }
  scan_range(s, lists.codes + start * nbytes, 0, n, w.queries.data(), m, w.selectors.data(), {},
             w.buffers, lists.ids + start);
  for (std::size_t j = 0; j < m; ++j) sel[qs[j] - base] = std::move(w.selectors[j]);
}

template <class S>
void probe_search(const S& s, const InvertedLists& lists, const std::uint8_t* queries,
                  std::size_t nq, const std::int64_t* probes, std::size_t nprobe, std::size_t k,
                  int nthreads, std::uint32_t* out_d, std::int64_t* out_id) {
  using E = Entry<HammingOrder>;
  using Selector = typename S::Selector;
  const auto sentinel = static_cast<std::uint32_t>(kHammingSentinel);
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
  std::vector<std::size_t> work_before{0};
  for (std::size_t l = 0; l < lists.nlist; ++l) {
    const std::size_t m = all.end[l] - all.begin[l];
    if (m == 0 || lists.size[l] == 0) continue;
    active.push_back(l);
    work_before.push_back(work_before.back() + static_cast<std::size_t>(lists.size[l]) * m * lists.nbytes);
  }
  const int wanted = threads_for(nthreads, work_before.back(), std::max(nq, active.size()));

  if (wanted <= 1 || nq >= 4 * static_cast<std::size_t>(wanted)) {
    const int T = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(wanted), nq));
    run_parallel(T, [&](int t) {
      const std::size_t q0 = nq * static_cast<std::size_t>(t) / static_cast<std::size_t>(T);
      const std::size_t q1 = nq * static_cast<std::size_t>(t + 1) / static_cast<std::size_t>(T);
      std::vector<Selector> sel;
      fresh_selectors(s, sel, q1 - q0, cap);
      Scratch<S> w;
      // A list's queries ascend, so this thread's are one run of them.
      for (std::size_t l : active) {
        const std::size_t* first = all.query.data() + all.begin[l];
        const std::size_t* last = all.query.data() + all.end[l];
        const std::size_t* mine = std::lower_bound(first, last, q0);
        scan_list(s, lists, l, mine, static_cast<std::size_t>(std::lower_bound(mine, last, q1) - mine),
                  queries, sel.data(), q0, w);
      }
      std::vector<E> best(cap);
      for (std::size_t q = 0; q < q1 - q0; ++q) {
        const std::size_t m = sel[q].take(best.data());
        write_sorted(best.data(), m, k, sentinel, out_d + (q0 + q) * k, out_id + (q0 + q) * k);
      }
    });
    return;
  }

  // Few queries: each thread scans a run of the probed lists of about equal work for all
  // of them; the per-thread top lists are then merged.
  const int T = wanted;
  const auto parts = static_cast<std::size_t>(T);
  std::vector<E> storage(parts * nq * cap);
  std::vector<std::size_t> sizes(parts * nq);
  run_parallel(T, [&](int t) {
    auto first_at = [&](int part) {
      const std::size_t goal = work_before.back() * static_cast<std::size_t>(part) / static_cast<std::size_t>(T);
      return static_cast<std::size_t>(
          std::lower_bound(work_before.begin(), work_before.end() - 1, goal) - work_before.begin());
    };
    const std::size_t a0 = first_at(t), a1 = t + 1 == T ? active.size() : first_at(t + 1);
    std::vector<Selector> sel;
    fresh_selectors(s, sel, nq, cap);
    Scratch<S> w;
    for (std::size_t a = a0; a < a1; ++a) {
      const std::size_t l = active[a];
      scan_list(s, lists, l, all.query.data() + all.begin[l], all.end[l] - all.begin[l], queries,
                sel.data(), 0, w);
    }
    const auto p = static_cast<std::size_t>(t);
    for (std::size_t q = 0; q < nq; ++q)
      sizes[p * nq + q] = sel[q].take(storage.data() + (p * nq + q) * cap);
  });
  merge_parts(storage, sizes, parts, nq, cap, k, sentinel, out_d, out_id);
}

}  // namespace

void ivf_hamming_search(const InvertedLists& lists, const std::uint8_t* queries, std::size_t nq,
                        const std::int64_t* probes, std::size_t nprobe, std::size_t k,
                        int nthreads, std::int32_t* distances, std::int64_t* ids) {
  const KernelSet& kernels = kernels_for(current_simd_level());
  const HammingPath forced = hamming_path_override();
  // As in hamming_search: distances fit in int32, and int32/uint32 may alias.
  auto* dist = reinterpret_cast<std::uint32_t*>(distances);
  if (lists.nbytes * 8 <= kMaxCountingBits)
    probe_search(HammingScan<TieAdmitting<CountingSelector>>{kernels, lists.nbytes, forced}, lists, queries, nq,
                 probes, nprobe, k, nthreads, dist, ids);
  else
    probe_search(HammingScan<TieAdmitting<HeapSelector<HammingOrder>>>{kernels, lists.nbytes, forced}, lists,
                 queries, nq, probes, nprobe, k, nthreads, dist, ids);
}

}  // namespace cofisearch
