// Identity snapshots of an optimizer's state (a dict of dicts), compared without touching the
// tensors in it: the native plan's per-step check that nothing in `state` was replaced.
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

}  // namespace fastopt
