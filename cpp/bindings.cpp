// pybind11 bindings (layer 5 of STYLE.md): check, allocate outputs, release the GIL, call.
//
// The Python layer validates user input and produces the user-facing messages; the checks
// here are the last line of defence so that no call from Python can reach a kernel with a
// wrong dtype, layout or size. Arrays are taken as they are: nothing is cast or copied.
#include <pybind11/numpy.h>
#include <cxxabi.h>
#include <unistd.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "ivf.h"
#include "search.h"
#include "simd.h"

namespace py = pybind11;
using cofisearch::SimdLevel;

namespace {

// Takes the GIL back after a search. A daemon thread whose search ends while the
// interpreter shuts down must not return into it: CPython (3.13 and earlier) ends such a
// thread with pthread_exit inside PyEval_RestoreThread, having dropped the GIL, and the
// forced unwind that starts there either crosses a noexcept destructor (std::terminate:
// py::gil_scoped_release's destructor aborted the whole process at exit) or releases
// Python objects without the GIL (a crash). The unwind is stopped here and the thread
// parks inside the handler, never leaving it (leaving without rethrowing would abort);
// it ends with the process, as CPython meant it to.
void take_gil_back(PyThreadState* state) {
  try {
    PyEval_RestoreThread(state);
  } catch (abi::__forced_unwind&) {
    for (;;) pause();
  }
}

// Runs fn with the GIL released.
template <class Fn>
void without_gil(Fn&& fn) {
  PyThreadState* const state = PyEval_SaveThread();
  try {
    fn();
  } catch (...) {
    take_gil_back(state);
    throw;
  }
  take_gil_back(state);
}

template <class T>
void require(const py::array& a, const char* name, const char* dtype_name) {
  if (!a.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name + ", got " +
                         std::string(py::str(a.dtype())));
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + " must be 2-D, got " + std::to_string(a.ndim()) +
                          "-D");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) +
                          " must be C-contiguous; try numpy.ascontiguousarray");
}

template <class T>
void require_1d(const py::array& a, const char* name, const char* dtype_name) {
  if (!a.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name + ", got " +
                         std::string(py::str(a.dtype())));
  if (a.ndim() != 1)
    throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                          "-D");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) +
                          " must be C-contiguous; try numpy.ascontiguousarray");
}

std::size_t rows_used(const py::array& db, std::int64_t n) {
  if (n < 0 || static_cast<std::uint64_t>(n) > static_cast<std::uint64_t>(db.shape(0)))
    throw py::value_error("n must be in [0, " + std::to_string(db.shape(0)) + "], got " +
                          std::to_string(n));
  return static_cast<std::size_t>(n);
}

std::size_t checked_k(std::int64_t k) {
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  return static_cast<std::size_t>(k);
}

int checked_threads(int t) {
  if (t < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(t));
  return t;
}

template <class V>
py::tuple allocate(std::size_t nq, std::size_t k, py::array_t<V>& values,
                   py::array_t<std::int64_t>& ids) {
  if (nq != 0 && k > static_cast<std::size_t>(std::numeric_limits<py::ssize_t>::max()) / 16 / nq)
    throw py::value_error("k * number of queries is too large: " + std::to_string(k) + " * " +
                          std::to_string(nq));
  values = py::array_t<V>({static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(k)});
  ids = py::array_t<std::int64_t>({static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(k)});
  return py::make_tuple(values, ids);
}

// The row filter of a search over `rows` rows: allow (uint64 words, a bit per row) and
// ids (int64, one per row) are None or arrays that cover every row.
cofisearch::RowFilter row_filter(const py::object& allow, const py::object& ids,
                                 bool ids_ascending, std::size_t rows) {
  cofisearch::RowFilter f;
  if (!allow.is_none()) {
    const auto a = allow.cast<py::array>();
    require_1d<std::uint64_t>(a, "allow", "uint64");
    if (static_cast<std::size_t>(a.shape(0)) < (rows + 63) / 64)
      throw py::value_error("allow must have a bit per row (" + std::to_string((rows + 63) / 64) +
                            " words), got " + std::to_string(a.shape(0)) + " words");
    f.allow = static_cast<const std::uint64_t*>(a.data());
  }
  if (!ids.is_none()) {
    const auto a = ids.cast<py::array>();
    require_1d<std::int64_t>(a, "ids", "int64");
    if (static_cast<std::size_t>(a.shape(0)) < rows)
      throw py::value_error("ids must have an id per row (" + std::to_string(rows) + "), got " +
                            std::to_string(a.shape(0)));
    f.ids = static_cast<const std::int64_t*>(a.data());
  }
  f.ids_ascending = ids_ascending;
  return f;
}

// Rows listed for a gather search: each in [0, rows).
const std::int64_t* gather_rows(const py::array& list, std::size_t rows) {
  require_1d<std::int64_t>(list, "rows", "int64");
  const auto* p = static_cast<const std::int64_t*>(list.data());
  for (py::ssize_t i = 0; i < list.shape(0); ++i)
    if (p[i] < 0 || p[i] >= static_cast<std::int64_t>(rows))
      throw py::value_error("rows must hold rows in [0, " + std::to_string(rows) + "), got " +
                            std::to_string(p[i]));
  return p;
}

py::tuple hamming_search(const py::array& codes, std::int64_t n, const py::array& queries,
                         std::int64_t k, int num_threads, const py::object& allow,
                         const py::object& row_ids, bool ids_ascending) {
  require<std::uint8_t>(codes, "codes", "uint8");
  require<std::uint8_t>(queries, "queries", "uint8");
  if (codes.shape(1) != queries.shape(1))
    throw py::value_error("queries must have " + std::to_string(codes.shape(1)) +
                          " bytes per row, got " + std::to_string(queries.shape(1)));
  const std::size_t rows = rows_used(codes, n), kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const std::size_t nbytes = static_cast<std::size_t>(codes.shape(1));
  const std::size_t nq = static_cast<std::size_t>(queries.shape(0));
  py::array_t<std::int32_t> dist;
  py::array_t<std::int64_t> ids;
  py::tuple out = allocate(nq, kk, dist, ids);
  const auto* cp = static_cast<const std::uint8_t*>(codes.data());
  const auto* qp = static_cast<const std::uint8_t*>(queries.data());
  std::int32_t* dp = dist.mutable_data();
  std::int64_t* ip = ids.mutable_data();
  const cofisearch::RowFilter f = row_filter(allow, row_ids, ids_ascending, rows);
  without_gil([&] { cofisearch::hamming_search(cp, rows, nbytes, qp, nq, kk, threads, dp, ip, f); });
  return out;
}

py::tuple hamming_gather(const py::array& codes, std::int64_t n, const py::array& queries,
                         const py::array& list, std::int64_t k, int num_threads,
                         const py::object& row_ids) {
  require<std::uint8_t>(codes, "codes", "uint8");
  require<std::uint8_t>(queries, "queries", "uint8");
  if (codes.shape(1) != queries.shape(1))
    throw py::value_error("queries must have " + std::to_string(codes.shape(1)) +
                          " bytes per row, got " + std::to_string(queries.shape(1)));
  const std::size_t rows = rows_used(codes, n), kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const std::int64_t* lp = gather_rows(list, rows);
  const auto m = static_cast<std::size_t>(list.shape(0));
  const cofisearch::RowFilter f = row_filter(py::none(), row_ids, true, rows);
  const std::size_t nbytes = static_cast<std::size_t>(codes.shape(1));
  const std::size_t nq = static_cast<std::size_t>(queries.shape(0));
  py::array_t<std::int32_t> dist;
  py::array_t<std::int64_t> ids;
  py::tuple out = allocate(nq, kk, dist, ids);
  const auto* cp = static_cast<const std::uint8_t*>(codes.data());
  const auto* qp = static_cast<const std::uint8_t*>(queries.data());
  std::int32_t* dp = dist.mutable_data();
  std::int64_t* ip = ids.mutable_data();
  without_gil([&] {
    cofisearch::hamming_gather_search(cp, nbytes, qp, nq, lp, m, kk, threads, dp, ip, f.ids);
  });
  return out;
}

py::tuple dot_gather(const py::array& db, std::int64_t n, const py::array& queries,
                     const py::array& list, std::int64_t k, int num_threads,
                     const py::object& row_ids) {
  require<float>(db, "database", "float32");
  require<float>(queries, "queries", "float32");
  if (db.shape(1) != queries.shape(1))
    throw py::value_error("queries must have " + std::to_string(db.shape(1)) +
                          " columns, got " + std::to_string(queries.shape(1)));
  const std::size_t rows = rows_used(db, n), kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const std::int64_t* lp = gather_rows(list, rows);
  const auto m = static_cast<std::size_t>(list.shape(0));
  const cofisearch::RowFilter f = row_filter(py::none(), row_ids, true, rows);
  const std::size_t dim = static_cast<std::size_t>(db.shape(1));
  const std::size_t nq = static_cast<std::size_t>(queries.shape(0));
  py::array_t<float> scores;
  py::array_t<std::int64_t> ids;
  py::tuple out = allocate(nq, kk, scores, ids);
  const auto* dbp = static_cast<const float*>(db.data());
  const auto* qp = static_cast<const float*>(queries.data());
  float* sp = scores.mutable_data();
  std::int64_t* ip = ids.mutable_data();
  without_gil([&] {
    cofisearch::dot_gather_search(dbp, dim, qp, nq, lp, m, kk, threads, sp, ip, f.ids);
  });
  return out;
}

// A bound on the norm of every row, or NaN where none is known.
void check_row_norm(float row_norm) {
  if (row_norm < 0.0f)
    throw py::value_error("row_norm must be a non-negative bound or NaN, got " + std::to_string(row_norm));
}

py::tuple dot_search(const py::array& db, std::int64_t n, const py::array& queries,
                     std::int64_t k, int num_threads, float row_norm, const py::object& allow,
                     const py::object& row_ids, bool ids_ascending) {
  require<float>(db, "database", "float32");
  check_row_norm(row_norm);
  require<float>(queries, "queries", "float32");
  if (db.shape(1) != queries.shape(1))
    throw py::value_error("queries must have " + std::to_string(db.shape(1)) +
                          " columns, got " + std::to_string(queries.shape(1)));
  const std::size_t rows = rows_used(db, n), kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const std::size_t dim = static_cast<std::size_t>(db.shape(1));
  const std::size_t nq = static_cast<std::size_t>(queries.shape(0));
  py::array_t<float> scores;
  py::array_t<std::int64_t> ids;
  py::tuple out = allocate(nq, kk, scores, ids);
  const auto* dbp = static_cast<const float*>(db.data());
  const auto* qp = static_cast<const float*>(queries.data());
  float* sp = scores.mutable_data();
  std::int64_t* ip = ids.mutable_data();
  const cofisearch::RowFilter f = row_filter(allow, row_ids, ids_ascending, rows);
  without_gil([&] { cofisearch::dot_search(dbp, rows, dim, row_norm, qp, nq, kk, threads, sp, ip, f); });
  return out;
}

// Whether every value of a float32 array is finite: the checks of every float input, in one
// pass where NumPy's min and max took two calls of a few microseconds each.
bool all_finite(const py::array& a) {
  if (!a.dtype().equal(py::dtype::of<float>()) || !(a.flags() & py::array::c_style))
    throw py::type_error("all_finite takes a C-contiguous float32 array, got " + std::string(py::str(a.dtype())));
  const auto* p = static_cast<const float*>(a.data());
  const auto n = static_cast<std::size_t>(a.size());
  const auto scan = [p, n] {
    // Exponent bits all set: infinity or NaN. Branch-free, so the loop vectorises.
    std::uint32_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t bits;
      std::memcpy(&bits, p + i, sizeof bits);
      bad |= static_cast<std::uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
  };
  if (n < (std::size_t(1) << 16)) return scan();
  bool ok = true;
  without_gil([&] { ok = scan(); });
  return ok;
}

// A dot_pack panel of n rows of dim floats: ceil(n / kPanelRows) rows of kPanelRows * dim.
void check_packed(const py::array& panel, const char* name, std::int64_t n, std::size_t dim) {
  require<float>(panel, name, "float32");
  const auto strips = static_cast<std::int64_t>(panel.shape(0));
  const auto per_strip = static_cast<std::int64_t>(cofisearch::kPanelRows);
  if (static_cast<std::size_t>(panel.shape(1)) != cofisearch::kPanelRows * dim)
    throw py::value_error(std::string(name) + " must have " + std::to_string(cofisearch::kPanelRows) +
                          " * dim = " + std::to_string(cofisearch::kPanelRows * dim) +
                          " columns for queries of dim " + std::to_string(dim) + ", got " +
                          std::to_string(panel.shape(1)));
  if (n < 0 || n > strips * per_strip || n <= (strips - 1) * per_strip)
    throw py::value_error("n must be the rows packed in " + std::string(name) + "'s " +
                          std::to_string(strips) + " strips of " + std::to_string(per_strip) +
                          ", got " + std::to_string(n));
}

// The (scores, ids) of nq x k float results that search(scores, ids) writes without the GIL.
template <class Search>
py::tuple scored(std::size_t nq, std::size_t k, Search&& search) {
  py::array_t<float> scores;
  py::array_t<std::int64_t> ids;
  py::tuple out = allocate(nq, k, scores, ids);
  float* sp = scores.mutable_data();
  std::int64_t* ip = ids.mutable_data();
  without_gil([&] { search(sp, ip); });
  return out;
}

py::tuple dot_route(const py::array& db, const py::array& panel, float row_norm,
                    const py::array& queries, std::int64_t k, int num_threads) {
  require<float>(db, "database", "float32");
  require<float>(queries, "queries", "float32");
  if (db.shape(1) != queries.shape(1))
    throw py::value_error("queries must have " + std::to_string(db.shape(1)) +
                          " columns, got " + std::to_string(queries.shape(1)));
  check_row_norm(row_norm);
  const auto n = static_cast<std::size_t>(db.shape(0)), dim = static_cast<std::size_t>(db.shape(1));
  check_packed(panel, "panel", static_cast<std::int64_t>(n), dim);
  const std::size_t kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const auto nq = static_cast<std::size_t>(queries.shape(0));
  const auto* dbp = static_cast<const float*>(db.data());
  const auto* pp = static_cast<const float*>(panel.data());
  const auto* qp = static_cast<const float*>(queries.data());
  return scored(nq, kk, [&](float* sp, std::int64_t* ip) {
    cofisearch::dot_route(dbp, pp, n, dim, row_norm, qp, nq, kk, threads, sp, ip);
  });
}

py::array_t<float> dot_scores_packed(const py::array& panel, std::int64_t n, const py::array& queries,
                                     int num_threads) {
  require<float>(queries, "queries", "float32");
  const auto dim = static_cast<std::size_t>(queries.shape(1));
  check_packed(panel, "panel", n, dim);
  const int threads = checked_threads(num_threads);
  const auto nq = static_cast<std::size_t>(queries.shape(0));
  const auto rows = static_cast<std::size_t>(n);
  py::array_t<float> out({nq, rows});
  const auto* pp = static_cast<const float*>(panel.data());
  const auto* qp = static_cast<const float*>(queries.data());
  float* op = out.mutable_data();
  without_gil([&] { cofisearch::dot_scores_packed(pp, rows, dim, qp, nq, threads, op); });
  return out;
}

// A float database packed for dot_search_packed: one row per strip of kPanelRows rows.
py::array_t<float> dot_pack(const py::array& db) {
  require<float>(db, "database", "float32");
  const auto n = static_cast<std::size_t>(db.shape(0)), dim = static_cast<std::size_t>(db.shape(1));
  const std::size_t strips = (n + cofisearch::kPanelRows - 1) / cofisearch::kPanelRows;
  py::array_t<float> panel({strips, cofisearch::kPanelRows * dim});
  const auto* dbp = static_cast<const float*>(db.data());
  float* pp = panel.mutable_data();
  without_gil([&] { cofisearch::dot_pack(dbp, n, dim, pp); });
  return panel;
}

py::tuple dot_search_packed(const py::array& panel, std::int64_t n, const py::array& queries,
                            std::int64_t k, int num_threads) {
  require<float>(queries, "queries", "float32");
  const auto dim = static_cast<std::size_t>(queries.shape(1));
  check_packed(panel, "panel", n, dim);
  const std::size_t kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const auto nq = static_cast<std::size_t>(queries.shape(0));
  const auto* pp = static_cast<const float*>(panel.data());
  const auto* qp = static_cast<const float*>(queries.data());
  const auto rows = static_cast<std::size_t>(n);
  return scored(nq, kk, [&](float* sp, std::int64_t* ip) {
    cofisearch::dot_search_packed(pp, rows, dim, qp, nq, kk, threads, sp, ip);
  });
}

py::tuple dot_rerank(const py::array& db, std::int64_t n, const py::array& queries,
                     const py::array& candidates, std::int64_t k, int num_threads) {
  require<float>(db, "database", "float32");
  require<float>(queries, "queries", "float32");
  require<std::int64_t>(candidates, "candidates", "int64");
  if (db.shape(1) != queries.shape(1))
    throw py::value_error("queries must have " + std::to_string(db.shape(1)) +
                          " columns, got " + std::to_string(queries.shape(1)));
  if (candidates.shape(0) != queries.shape(0))
    throw py::value_error("candidates must have one row per query (" +
                          std::to_string(queries.shape(0)) + "), got " +
                          std::to_string(candidates.shape(0)));
  const std::size_t rows = rows_used(db, n), kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const std::size_t dim = static_cast<std::size_t>(db.shape(1));
  const std::size_t nq = static_cast<std::size_t>(queries.shape(0));
  const std::size_t c = static_cast<std::size_t>(candidates.shape(1));
  const auto* cand = static_cast<const std::int64_t*>(candidates.data());
  for (std::size_t i = 0; i < nq * c; ++i)
    if (cand[i] < -1 || cand[i] >= static_cast<std::int64_t>(rows))
      throw py::value_error("candidates must hold ids in [0, " + std::to_string(rows) +
                            ") or -1 as padding, got " + std::to_string(cand[i]));
  py::array_t<float> scores;
  py::array_t<std::int64_t> ids;
  py::tuple out = allocate(nq, kk, scores, ids);
  const auto* dbp = static_cast<const float*>(db.data());
  const auto* qp = static_cast<const float*>(queries.data());
  float* sp = scores.mutable_data();
  std::int64_t* ip = ids.mutable_data();
  without_gil([&] { cofisearch::dot_rerank(dbp, dim, qp, nq, cand, c, kk, threads, sp, ip); });
  return out;
}

// Checks the lists of an inverted-list search over `rows` rows; returns nlist.
std::size_t checked_lists(const py::array& list_start, const py::array& list_size, std::int64_t rows) {
  require_1d<std::int64_t>(list_start, "list_start", "int64");
  require_1d<std::int64_t>(list_size, "list_size", "int64");
  if (list_size.shape(0) != list_start.shape(0) || list_start.shape(0) == 0)
    throw py::value_error("list_start and list_size must have the same length >= 1, got " +
                          std::to_string(list_start.shape(0)) + " and " +
                          std::to_string(list_size.shape(0)));
  const std::size_t nlist = static_cast<std::size_t>(list_start.shape(0));
  const auto* start = static_cast<const std::int64_t*>(list_start.data());
  const auto* size = static_cast<const std::int64_t*>(list_size.data());
  for (std::size_t l = 0; l < nlist; ++l)
    if (start[l] < 0 || size[l] < 0 || start[l] > rows || size[l] > rows - start[l])
      throw py::value_error("list " + std::to_string(l) + " (rows " + std::to_string(start[l]) +
                            " + " + std::to_string(size[l]) + ") must lie inside the " +
                            std::to_string(rows) + " rows of codes");
  return nlist;
}

// The lists of codes (checked by checked_lists, nlist of them) with their ids, and the
// rows that `allow` (None, or uint64 words with a bit per row) lets through.
cofisearch::InvertedLists inverted_lists(const py::array& codes, const py::array& ids,
                                         const py::array& list_start, const py::array& list_size,
                                         std::size_t nlist, const py::object& allow) {
  const auto rows = static_cast<std::size_t>(codes.shape(0));
  return {static_cast<const std::uint8_t*>(codes.data()), static_cast<const std::int64_t*>(ids.data()),
          static_cast<const std::int64_t*>(list_start.data()),
          static_cast<const std::int64_t*>(list_size.data()), nlist,
          static_cast<std::size_t>(codes.shape(1)), row_filter(allow, py::none(), true, rows).allow};
}

void check_probes(const py::array& probes, std::size_t nq, std::size_t nlist) {
  require<std::int64_t>(probes, "probes", "int64");
  if (static_cast<std::size_t>(probes.shape(0)) != nq)
    throw py::value_error("probes must have one row per query (" + std::to_string(nq) + "), got " +
                          std::to_string(probes.shape(0)));
  const auto* pp = static_cast<const std::int64_t*>(probes.data());
  const std::size_t count = nq * static_cast<std::size_t>(probes.shape(1));
  for (std::size_t i = 0; i < count; ++i)
    if (pp[i] < -1 || pp[i] >= static_cast<std::int64_t>(nlist))
      throw py::value_error("probes must hold list numbers in [0, " + std::to_string(nlist) +
                            ") or -1, got " + std::to_string(pp[i]));
}

// The asymmetric screen's lists already in panel form (panel and panel_start, or two Nones),
// held until the search returns.
struct StoredPanel {
  py::array words, groups;
  cofisearch::AsymPanel view;
  StoredPanel(const py::object& panel, const py::object& panel_start, std::size_t nlist,
              std::size_t nbytes, const py::array& list_size) {
    if (panel.is_none() != panel_start.is_none())
      throw py::value_error("panel and panel_start must be given together");
    if (panel.is_none()) return;
    words = py::array::ensure(panel);
    groups = py::array::ensure(panel_start);
    require_1d<std::uint64_t>(words, "panel", "uint64");
    require_1d<std::int64_t>(groups, "panel_start", "int64");
    if (nbytes % 8 || static_cast<std::size_t>(groups.shape(0)) != nlist)
      throw py::value_error("panel needs codes of whole 64-bit words and panel_start one entry per list");
    const auto* ps = static_cast<const std::int64_t*>(groups.data());
    const auto* ls = static_cast<const std::int64_t*>(list_size.data());
    const auto count = static_cast<std::int64_t>(words.shape(0)) /
                       static_cast<std::int64_t>(nbytes / 8 * cofisearch::kCodeGroup);
    for (std::size_t l = 0; l < nlist; ++l)
      if (ps[l] < 0 || ps[l] + (ls[l] + 7) / 8 > count)
        throw py::value_error("panel_start names groups outside the panel for list " + std::to_string(l));
    view = {static_cast<const std::uint64_t*>(words.data()), ps};
  }
};

// The asymmetric screen's codes and factors, with their ids: their width in bytes.
std::size_t checked_asym_codes(const py::array& codes, const py::array& factors, const py::array& ids) {
  require<std::uint8_t>(codes, "codes", "uint8");
  require_1d<float>(factors, "factors", "float32");
  require_1d<std::int64_t>(ids, "ids", "int64");
  const auto rows = static_cast<std::int64_t>(codes.shape(0));
  if (ids.shape(0) != rows || factors.shape(0) != rows)
    throw py::value_error("ids and factors must have one entry per row of codes (" +
                          std::to_string(rows) + "), got " + std::to_string(ids.shape(0)) + " and " +
                          std::to_string(factors.shape(0)));
  const std::size_t nbytes = static_cast<std::size_t>(codes.shape(1));
  if (nbytes == 0 || nbytes * 8 > cofisearch::kMaxAsymBits)
    throw py::value_error("codes must have 1 to " + std::to_string(cofisearch::kMaxAsymBits / 8) +
                          " bytes per row, got " + std::to_string(nbytes));
  return nbytes;
}

std::size_t checked_qbits(std::int64_t qbits) {
  if (qbits < 1 || static_cast<std::uint64_t>(qbits) > cofisearch::kMaxQueryBits)
    throw py::value_error("qbits must be in [1, " + std::to_string(cofisearch::kMaxQueryBits) +
                          "], got " + std::to_string(qbits));
  return static_cast<std::size_t>(qbits);
}

py::tuple ivf_asym_query(const py::array& codes, const py::array& factors, const py::array& ids,
                         const py::array& list_start, const py::array& list_size,
                         const py::array& centroids, const py::array& centroid_panel, float row_norm,
                         const py::array& scale, const py::array& rotation_panel,
                         const py::array& vectors, std::int64_t qbits, std::int64_t nprobe,
                         std::int64_t k, int num_threads, const py::object& allow,
                         const py::object& panel, const py::object& panel_start) {
  const std::size_t nbytes = checked_asym_codes(codes, factors, ids);
  const std::size_t qb = checked_qbits(qbits);
  const std::size_t nlist = checked_lists(list_start, list_size, static_cast<std::int64_t>(codes.shape(0)));
  require<float>(centroids, "centroids", "float32");
  require<float>(vectors, "vectors", "float32");
  require_1d<float>(scale, "scale", "float32");
  const auto dim = static_cast<std::size_t>(centroids.shape(1));
  if (static_cast<std::size_t>(centroids.shape(0)) != nlist || static_cast<std::size_t>(scale.shape(0)) != nlist)
    throw py::value_error("centroids and scale must have one entry per list (" + std::to_string(nlist) +
                          "), got " + std::to_string(centroids.shape(0)) + " and " +
                          std::to_string(scale.shape(0)));
  if (static_cast<std::size_t>(vectors.shape(1)) != dim)
    throw py::value_error("vectors must have " + std::to_string(dim) + " columns, got " +
                          std::to_string(vectors.shape(1)));
  check_row_norm(row_norm);
  check_packed(centroid_panel, "centroid_panel", static_cast<std::int64_t>(nlist), dim);
  check_packed(rotation_panel, "rotation_panel", static_cast<std::int64_t>(nbytes * 8), dim);
  if (nprobe < 1 || static_cast<std::size_t>(nprobe) > nlist)
    throw py::value_error("nprobe must be in [1, " + std::to_string(nlist) + "], got " + std::to_string(nprobe));
  const std::size_t kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const auto nq = static_cast<std::size_t>(vectors.shape(0));
  const cofisearch::InvertedLists lists = inverted_lists(codes, ids, list_start, list_size, nlist, allow);
  const StoredPanel stored(panel, panel_start, nlist, nbytes, list_size);
  const cofisearch::AsymRouting routing{static_cast<const float*>(centroids.data()),
                                        static_cast<const float*>(centroid_panel.data()), nlist, dim,
                                        row_norm, static_cast<const float*>(scale.data()),
                                        static_cast<const float*>(rotation_panel.data()), nbytes * 8};
  const auto* fp = static_cast<const float*>(factors.data());
  const auto* vp = static_cast<const float*>(vectors.data());
  const auto np = static_cast<std::size_t>(nprobe);
  bool finite = true;
  py::tuple out = scored(nq, kk, [&](float* sp, std::int64_t* ip) {
    finite = cofisearch::ivf_asym_query(lists, fp, routing, vp, nq, qb, np, kk, threads, sp, ip, stored.view);
  });
  if (!finite) throw py::value_error("vectors must be small enough to rotate: a rotated query overflowed float32");
  return out;
}

py::tuple ivf_asym_search(const py::array& codes, const py::array& factors, const py::array& ids,
                          const py::array& list_start, const py::array& list_size,
                          const py::array& planes, std::int64_t qbits, const py::array& consts,
                          const py::array& probes, const py::array& bias, std::int64_t k,
                          int num_threads, const py::object& allow, const py::object& panel,
                          const py::object& panel_start) {
  const std::size_t nbytes = checked_asym_codes(codes, factors, ids);
  require<std::uint8_t>(planes, "planes", "uint8");
  require<float>(consts, "consts", "float32");
  require<float>(bias, "bias", "float32");
  const std::size_t qb = checked_qbits(qbits);
  const std::size_t nlist = checked_lists(list_start, list_size, static_cast<std::int64_t>(codes.shape(0)));
  const std::size_t nq = static_cast<std::size_t>(planes.shape(0));
  if (static_cast<std::size_t>(planes.shape(1)) != qb * nbytes)
    throw py::value_error("planes must have qbits * " + std::to_string(nbytes) + " = " +
                          std::to_string(qb * nbytes) + " bytes per query, got " +
                          std::to_string(planes.shape(1)));
  if (static_cast<std::size_t>(consts.shape(0)) != nq || consts.shape(1) != 3)
    throw py::value_error("consts must be (" + std::to_string(nq) + ", 3), got (" +
                          std::to_string(consts.shape(0)) + ", " + std::to_string(consts.shape(1)) + ")");
  check_probes(probes, nq, nlist);
  if (bias.shape(0) != probes.shape(0) || bias.shape(1) != probes.shape(1))
    throw py::value_error("bias must have the shape of probes");
  const std::size_t kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  py::array_t<float> scores;
  py::array_t<std::int64_t> out_ids;
  py::tuple out = allocate(nq, kk, scores, out_ids);
  const cofisearch::InvertedLists lists = inverted_lists(codes, ids, list_start, list_size, nlist, allow);
  const cofisearch::AsymQueries queries{static_cast<const std::uint8_t*>(planes.data()), qb,
                                        static_cast<const float*>(consts.data()),
                                        static_cast<const float*>(bias.data())};
  StoredPanel stored(panel, panel_start, nlist, nbytes, list_size);
  const auto* fp = static_cast<const float*>(factors.data());
  const auto* pp = static_cast<const std::int64_t*>(probes.data());
  const std::size_t nprobe = static_cast<std::size_t>(probes.shape(1));
  float* sp = scores.mutable_data();
  std::int64_t* ip = out_ids.mutable_data();
  without_gil([&] {
    cofisearch::ivf_asym_search(lists, fp, queries, nq, pp, nprobe, kk, threads, sp, ip, stored.view);
  });
  return out;
}

py::tuple quantize_queries(const py::array& rotated, std::int64_t qbits) {
  require<float>(rotated, "rotated", "float32");
  const std::size_t nbits = static_cast<std::size_t>(rotated.shape(1));
  if (nbits == 0 || nbits % 8 || nbits > cofisearch::kMaxAsymBits)
    throw py::value_error("rotated must have a multiple of 8 columns, 8 to " +
                          std::to_string(cofisearch::kMaxAsymBits) + ", got " + std::to_string(nbits));
  const std::size_t qb = checked_qbits(qbits);
  const auto nq = static_cast<std::size_t>(rotated.shape(0));
  py::array_t<std::uint8_t> planes({nq, qb * nbits / 8});
  py::array_t<float> consts({nq, std::size_t(3)});
  const auto* w = static_cast<const float*>(rotated.data());
  std::uint8_t* pp = planes.mutable_data();
  float* cp = consts.mutable_data();
  bool finite = true;
  without_gil([&] { finite = cofisearch::quantize_queries(w, nq, nbits, qb, pp, cp); });
  if (!finite) throw py::value_error("rotated must contain only finite values, got NaN or infinity");
  return py::make_tuple(planes, consts);
}

py::tuple ivf_search(const py::array& codes, const py::array& ids, const py::array& list_start,
                     const py::array& list_size, const py::array& queries,
                     const py::array& probes, std::int64_t k, int num_threads,
                     const py::object& allow) {
  require<std::uint8_t>(codes, "codes", "uint8");
  require_1d<std::int64_t>(ids, "ids", "int64");
  require<std::uint8_t>(queries, "queries", "uint8");
  if (ids.shape(0) != codes.shape(0))
    throw py::value_error("ids must have one entry per row of codes (" +
                          std::to_string(codes.shape(0)) + "), got " + std::to_string(ids.shape(0)));
  const std::size_t nlist = checked_lists(list_start, list_size, static_cast<std::int64_t>(codes.shape(0)));
  if (codes.shape(1) != queries.shape(1))
    throw py::value_error("queries must have " + std::to_string(codes.shape(1)) +
                          " bytes per row, got " + std::to_string(queries.shape(1)));
  const std::size_t nq = static_cast<std::size_t>(queries.shape(0));
  check_probes(probes, nq, nlist);
  const std::size_t kk = checked_k(k);
  const int threads = checked_threads(num_threads);
  const std::size_t nprobe = static_cast<std::size_t>(probes.shape(1));
  const auto* pp = static_cast<const std::int64_t*>(probes.data());
  py::array_t<std::int32_t> dist;
  py::array_t<std::int64_t> out_ids;
  py::tuple out = allocate(nq, kk, dist, out_ids);
  const cofisearch::InvertedLists lists = inverted_lists(codes, ids, list_start, list_size, nlist, allow);
  const auto* qp = static_cast<const std::uint8_t*>(queries.data());
  std::int32_t* dp = dist.mutable_data();
  std::int64_t* ip = out_ids.mutable_data();
  without_gil([&] { cofisearch::ivf_hamming_search(lists, qp, nq, pp, nprobe, kk, threads, dp, ip); });
  return out;
}

cofisearch::ScanKind parse_scan_kind(const std::string& kind) {
  if (kind == "hamming") return cofisearch::ScanKind::hamming;
  if (kind == "dot") return cofisearch::ScanKind::dot;
  throw py::value_error("kind must be 'hamming' or 'dot', got '" + kind + "'");
}

std::size_t non_negative(std::int64_t v, const char* name) {
  if (v < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

constexpr const char* kDotPathNames[] = {"auto", "stream", "query_panel", "row_panel"};
constexpr const char* kHammingPathNames[] = {"auto", "stream", "panel", "dense"};

SimdLevel parse_level(const std::string& name) {
  try {
    return cofisearch::parse_simd_level(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "cofisearch native core: SIMD Hamming and inner-product scans with fused top-k";
  m.attr("HAMMING_SENTINEL") = cofisearch::kHammingSentinel;
  m.attr("SCORE_SENTINEL") = cofisearch::kScoreSentinel;
#ifdef COFISEARCH_VERSION
  m.attr("__version__") = COFISEARCH_VERSION;
#endif

  m.def("simd_level", [] { return std::string(cofisearch::simd_level_name(cofisearch::current_simd_level())); },
        "Name of the SIMD level that searches use now.");
  m.def("available_simd_levels", [] {
    py::list out;
    for (SimdLevel l : cofisearch::available_simd_levels()) out.append(cofisearch::simd_level_name(l));
    return out;
  }, "Levels this processor supports, from 'scalar' upwards.");
  m.def("set_simd_level", [](const std::string& name) {
    try {
      cofisearch::set_simd_level(parse_level(name));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("level"), "Forces a SIMD level; ValueError when the processor lacks it.");

  m.def("hamming_search", &hamming_search, py::arg("codes"), py::arg("n"), py::arg("queries"),
        py::arg("k"), py::arg("num_threads"), py::arg("allow") = py::none(),
        py::arg("ids") = py::none(), py::arg("ids_ascending") = true,
        "Exact Hamming top-k of uint8 queries over the first n rows of codes; with allow "
        "(uint64 words, a bit per row) only over the rows set, and with ids (int64, one "
        "per row) returned by those ids (ids_ascending: they increase with the row).");
  m.def("hamming_gather", &hamming_gather, py::arg("codes"), py::arg("n"), py::arg("queries"),
        py::arg("rows"), py::arg("k"), py::arg("num_threads"), py::arg("ids") = py::none(),
        "Exact Hamming top-k of uint8 queries over the listed rows only (int64), "
        "returned by ids[row] when ids is given.");
  m.def("dot_gather", &dot_gather, py::arg("database"), py::arg("n"), py::arg("queries"),
        py::arg("rows"), py::arg("k"), py::arg("num_threads"), py::arg("ids") = py::none(),
        "Exact inner-product top-k of float32 queries over the listed rows only (int64), "
        "returned by ids[row] when ids is given.");
  m.def("dot_pack", &dot_pack, py::arg("database"),
        "The rows of a float32 database packed for dot_search_packed (cpp/kernels.h, "
        "DotPackFn): one row of 32 * dim floats per strip of 32 rows.");
  m.def("dot_search_packed", &dot_search_packed, py::arg("panel"), py::arg("n"), py::arg("queries"),
        py::arg("k"), py::arg("num_threads"),
        "dot_search over the n rows of a dot_pack panel, every score computed and each query's "
        "top k selected from its whole row (cpp/search.h): (scores, ids), as dot_search's.");
  m.def("dot_route", &dot_route, py::arg("database"), py::arg("panel"), py::arg("row_norm"),
        py::arg("queries"), py::arg("k"), py::arg("num_threads"),
        "The top k of each query over a small database given both as rows and as its dot_pack "
        "panel, by whichever of dot_search and dot_search_packed pays (cpp/search.h).");
  m.def("dot_scores_packed", &dot_scores_packed, py::arg("panel"), py::arg("n"), py::arg("queries"),
        py::arg("num_threads"),
        "Every inner product of each query with the n rows of a dot_pack panel, (nq, n) in row "
        "order, the same bits as dot_search's.");
  m.def("dot_search", &dot_search, py::arg("database"), py::arg("n"), py::arg("queries"),
        py::arg("k"), py::arg("num_threads"),
        py::arg("row_norm") = std::numeric_limits<float>::quiet_NaN(),
        py::arg("allow") = py::none(), py::arg("ids") = py::none(),
        py::arg("ids_ascending") = true,
        "Exact inner-product top-k of float32 queries over the first n rows of database. "
        "row_norm, if given, must bound the norm of every row (it only saves work).");
  m.def("dot_rerank", &dot_rerank, py::arg("database"), py::arg("n"), py::arg("queries"),
        py::arg("candidates"), py::arg("k"), py::arg("num_threads"),
        "Inner-product top-k of each query over its own row of candidate ids.");
  m.def("ivf_search", &ivf_search, py::arg("codes"), py::arg("ids"), py::arg("list_start"),
        py::arg("list_size"), py::arg("queries"), py::arg("probes"), py::arg("k"),
        py::arg("num_threads"), py::arg("allow") = py::none(),
        "Exact Hamming top-k of each query over the inverted lists named in its row of "
        "probes (-1 skipped): list l is rows list_start[l] .. + list_size[l] of codes, "
        "reporting ids of those rows; with allow (uint64 words, a bit per row of codes), "
        "only rows whose bit is set.");
  m.def("ivf_asym_search", &ivf_asym_search, py::arg("codes"), py::arg("factors"), py::arg("ids"),
        py::arg("list_start"), py::arg("list_size"), py::arg("planes"), py::arg("qbits"),
        py::arg("consts"), py::arg("probes"), py::arg("bias"), py::arg("k"), py::arg("num_threads"),
        py::arg("allow") = py::none(), py::arg("panel") = py::none(), py::arg("panel_start") = py::none(),
        "Top-k estimated inner products (cpp/asym.h) of each query over the inverted lists "
        "named in its row of probes: 1-bit codes with one factor per row, queries as qbits "
        "bit planes with (scale, lo2, shift) constants and a bias per probed list; allow as "
        "for ivf_search.");

  m.def("ivf_asym_query", &ivf_asym_query, py::arg("codes"), py::arg("factors"), py::arg("ids"),
        py::arg("list_start"), py::arg("list_size"), py::arg("centroids"), py::arg("centroid_panel"),
        py::arg("row_norm"), py::arg("scale"), py::arg("rotation_panel"), py::arg("vectors"),
        py::arg("qbits"), py::arg("nprobe"), py::arg("k"), py::arg("num_threads"),
        py::arg("allow") = py::none(), py::arg("panel") = py::none(), py::arg("panel_start") = py::none(),
        "The asymmetric screen's whole search of float queries: route, rotate, quantise, scan "
        "(cpp/ivf.h); (scores, ids) as ivf_asym_search's.");
  m.def("all_finite", &all_finite, py::arg("array"),
        "Whether every value of a C-contiguous float32 array is finite (no NaN, no infinity).");
  m.def("quantize_queries", &quantize_queries, py::arg("rotated"), py::arg("qbits"),
        "The asymmetric screen's (planes, consts) of float32 rotated queries, qbits bits a "
        "dimension (cpp/ivf.h; cofisearch._reference.quantize_queries bit for bit).");

  // Private: what the drivers decide, for the tests (cpp/search.h); not part of the API.
  m.def("_block_rows", [](const std::string& kind, std::int64_t row_bytes, std::int64_t nq) {
    return cofisearch::scan_block_rows(parse_scan_kind(kind), non_negative(row_bytes, "row_bytes"),
                                       non_negative(nq, "nq"));
  }, py::arg("kind"), py::arg("row_bytes"), py::arg("nq"),
        "Rows per full cache block of a 'hamming' or 'dot' scan of nq queries.");
  m.def("_scan_blocks", [](const std::string& kind, std::int64_t row_bytes, std::int64_t nq,
                           std::int64_t n) {
    return cofisearch::scan_blocks(parse_scan_kind(kind), non_negative(row_bytes, "row_bytes"),
                                   non_negative(nq, "nq"), non_negative(n, "n"));
  }, py::arg("kind"), py::arg("row_bytes"), py::arg("nq"), py::arg("n"),
        "Row count of each block, in order, of one thread's scan of n rows.");
  m.def("_dot_path", [](std::int64_t nq) {
    return std::string(kDotPathNames[static_cast<int>(cofisearch::dot_path(non_negative(nq, "nq")))]);
  }, py::arg("nq"),
        "Kernel dot_search runs for nq queries at the current SIMD level: 'stream', "
        "'query_panel' or 'row_panel'.");
  m.def("_force_dot_path", [](const std::string& path) {
    for (int p = 0; p < 4; ++p)
      if (path == kDotPathNames[p]) return cofisearch::force_dot_path(static_cast<cofisearch::DotPath>(p));
    throw py::value_error("path must be 'auto', 'stream', 'query_panel' or 'row_panel', got '" +
                          path + "'");
  }, py::arg("path"),
        "Test hook: makes every dot_search take this path whatever the batch size; 'auto' "
        "restores the choice by batch size.");
  m.def("_hamming_path", [](std::int64_t nq, std::int64_t nbytes, std::int64_t n) {
    return std::string(kHammingPathNames[static_cast<int>(cofisearch::hamming_path(
        non_negative(nq, "nq"), non_negative(nbytes, "nbytes"), non_negative(n, "n")))]);
  }, py::arg("nq"), py::arg("nbytes"), py::arg("n") = std::int64_t(1) << 31,
        "Kernel hamming_search runs for nq queries over n codes of nbytes bytes (by default "
        "a database too large for 'dense') at the current SIMD level: 'stream', 'panel' or "
        "'dense'.");
  m.def("_force_hamming_path", [](const std::string& path) {
    for (int p = 0; p < 4; ++p)
      if (path == kHammingPathNames[p])
        return cofisearch::force_hamming_path(static_cast<cofisearch::HammingPath>(p));
    throw py::value_error("path must be 'auto', 'stream', 'panel' or 'dense', got '" + path +
                          "'");
  }, py::arg("path"),
        "Test hook: makes every hamming_search take this path whatever the batch size; "
        "'auto' restores the choice by batch size.");
}
