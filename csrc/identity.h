// Identity snapshots of an optimizer's state (a dict of dicts) and of its groups' parameter
// lists, compared without touching the objects in them: the native plan's and the flat
// buffers' per-step checks that nothing was replaced.
#pragma once

#include <cstdint>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace fastopt {

// Addresses of the objects of a dict of dicts, in iteration order: per entry its key and its
// value and, when the value is a dict, that dict's size and each of its keys and values.
pybind11::array_t<uint64_t> state_addresses(pybind11::handle state);

// Whether state_addresses(state) equals `snapshot`. The caller keeps the snapshot's objects
// alive, so an equal address is the same object (no other object can have it meanwhile).
bool state_unchanged(pybind11::handle state, const pybind11::array_t<uint64_t>& snapshot);

// state_unchanged over a raw snapshot of n words: reads the dicts' entries only (no reference
// count touched, nothing allocated, nothing raised; `state` must be a dict), so a thread that
// does not hold the GIL may run it while the thread that does runs no Python code.
bool state_matches(PyObject* state, const uint64_t* snapshot, std::size_t n);

// The length of every list of a list of lists (param groups' parameter lists) and the address
// of each item, in order.
pybind11::array_t<uint64_t> list_addresses(pybind11::handle lists);

// Whether list_addresses(lists) equals `snapshot` (whose items the caller keeps alive).
bool lists_unchanged(pybind11::handle lists, const pybind11::array_t<uint64_t>& snapshot);

}  // namespace fastopt
