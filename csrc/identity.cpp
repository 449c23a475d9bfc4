// Identity snapshots of an optimizer's state: one pass over the dicts' own entry tables with
// borrowed references (no reference count touched, no tensor dereferenced), so the check costs
// a few loads per entry however cold the tensors are.
#include "identity.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace fastopt {
namespace {

uint64_t address(PyObject* obj) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(obj)); }

// Calls visit(word) for every word of the snapshot, in order; stops (false) when visit does.
template <class Visit>
bool walk(py::handle state, Visit&& visit) {
  if (!PyDict_Check(state.ptr())) throw py::type_error("state must be a dict");
  Py_ssize_t pos = 0;
  PyObject* key = nullptr;
  PyObject* value = nullptr;
  while (PyDict_Next(state.ptr(), &pos, &key, &value)) {
    if (!visit(address(key)) || !visit(address(value))) return false;
    if (!PyDict_Check(value)) continue;
    if (!visit(static_cast<uint64_t>(PyDict_Size(value)))) return false;
    Py_ssize_t inner = 0;
    PyObject* k = nullptr;
    PyObject* v = nullptr;
    while (PyDict_Next(value, &inner, &k, &v)) {
      if (!visit(address(k)) || !visit(address(v))) return false;
    }
  }
  return true;
}

// Calls visit(word) for the length of every list in `lists` and the address of each item.
template <class Visit>
bool walk_lists(py::handle lists, Visit&& visit) {
  if (!PyList_Check(lists.ptr())) throw py::type_error("lists must be a list of lists");
  const Py_ssize_t n = PyList_GET_SIZE(lists.ptr());
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* list = PyList_GET_ITEM(lists.ptr(), i);
    if (!PyList_Check(list)) throw py::type_error("lists must be a list of lists");
    const Py_ssize_t m = PyList_GET_SIZE(list);
    if (!visit(static_cast<uint64_t>(m))) return false;
    for (Py_ssize_t j = 0; j < m; ++j) {
      if (!visit(address(PyList_GET_ITEM(list, j)))) return false;
    }
  }
  return true;
}

// Every word a walk visits, as an array.
template <class Walk>
py::array_t<uint64_t> words_of(Walk&& walk) {
  std::vector<uint64_t> words;
  walk([&](uint64_t w) {
    words.push_back(w);
    return true;
  });
  py::array_t<uint64_t> out(static_cast<py::ssize_t>(words.size()));
  std::copy(words.begin(), words.end(), out.mutable_data());
  return out;
}

template <class Walk>
bool same_words(Walk&& walk, const uint64_t* expect, std::size_t n) {
  std::size_t i = 0;
  const bool same = walk([&](uint64_t w) { return i < n && expect[i++] == w; });
  return same && i == n;
}

template <class Walk>
bool same_as(Walk&& walk, const py::array_t<uint64_t>& snapshot) {
  if (snapshot.ndim() != 1) throw std::invalid_argument("snapshot must be 1-D");
  return same_words(walk, snapshot.data(), static_cast<std::size_t>(snapshot.shape(0)));
}

}  // namespace

py::array_t<uint64_t> list_addresses(py::handle lists) {
  return words_of([&](auto&& visit) { return walk_lists(lists, visit); });
}

bool lists_unchanged(py::handle lists, const py::array_t<uint64_t>& snapshot) {
  return same_as([&](auto&& visit) { return walk_lists(lists, visit); }, snapshot);
}

py::array_t<uint64_t> state_addresses(py::handle state) {
  return words_of([&](auto&& visit) { return walk(state, visit); });
}

bool state_matches(PyObject* state, const uint64_t* snapshot, std::size_t n) {
  return same_words([&](auto&& visit) { return walk(state, visit); }, snapshot, n);
}

bool state_unchanged(py::handle state, const py::array_t<uint64_t>& snapshot) {
  return same_as([&](auto&& visit) { return walk(state, visit); }, snapshot);
}

}  // namespace fastopt
