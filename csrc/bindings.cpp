// fastopt._C: the native core. Bindings only; the logic lives in the other files.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "matcher.h"
#include "rules.h"

namespace py = pybind11;
using fastopt::Assignment;
using fastopt::KeyMatcher;

namespace {

py::array_t<int32_t> match(const std::vector<std::string>& names, const std::vector<std::string>& keys) {
  py::array_t<int32_t> out(static_cast<py::ssize_t>(names.size()));
  int32_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    const KeyMatcher matcher(keys);
    for (std::size_t i = 0; i < names.size(); ++i) dst[i] = matcher.best_match(names[i]);
  }
  return out;
}

py::tuple assign(const std::vector<std::string>& names,
                 const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& flags,
                 const std::vector<std::string>& keys, uint32_t config) {
  if (flags.ndim() != 1 || static_cast<std::size_t>(flags.shape(0)) != names.size())
    throw std::invalid_argument("assign: flags must be a 1-D array with one entry per name");
  Assignment result;
  {
    py::gil_scoped_release release;
    result = fastopt::assign(names, flags.data(), keys, config);
  }
  py::array_t<int32_t> ids(static_cast<py::ssize_t>(result.ids.size()));
  std::copy(result.ids.begin(), result.ids.end(), ids.mutable_data());
  py::array_t<int32_t> table({static_cast<py::ssize_t>(result.table.size()), py::ssize_t{4}});
  auto t = table.mutable_unchecked<2>();
  for (std::size_t r = 0; r < result.table.size(); ++r) {
    const auto row = static_cast<py::ssize_t>(r);
    t(row, 0) = result.table[r].key;
    t(row, 1) = result.table[r].lr;
    t(row, 2) = result.table[r].wd;
    t(row, 3) = result.table[r].kind;
  }
  return py::make_tuple(ids, table);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastopt native core: custom-key matching and paramwise rule assignment.";
  m.def("match", &match, py::arg("names"), py::arg("keys"),
        "Index of the custom key the reference picks for each name (longest, then "
        "alphabetical substring match), -1 where none matches.");
  m.def("assign", &assign, py::arg("names"), py::arg("flags"), py::arg("keys"), py::arg("config"),
        "Rule outcome per parameter: (ids, table), ids[i] indexing rows (key, lr_rule, "
        "wd_rule, kind) of table, rows in first-seen order.");
}
