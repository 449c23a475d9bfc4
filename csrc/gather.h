// The native tier's per-step read of a plan's rows: one pass over the parameters that takes
// each one's gradient and checks what the kernel will read (sizes, dtypes, contiguity,
// storage addresses), so every tensor's metadata is touched once per step.
#pragma once

#include <cstdint>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace fastopt {

// What gather_rows found: whether every row matched the plan (else the caller checks the long
// way), and the gradients that are not None, in row order (their addresses and rows are in
// the first len(grads) entries of gather_rows' grad_ptrs and rows).
struct Gathered {
  bool matched;
  pybind11::list grads;
  int same;  // whether the state held the snapshot's objects (1, 0; -1: not asked)
};

// Entries of gather_rows' `methods` tuple.
constexpr Py_ssize_t kMethods = 9;

// What the shim in `methods` (see gather_rows) reads of `t`: (is_contiguous, numel, scalar type,
// address), or None when it does not read t (no shim; not of a `plain` type; a borrowed tensor; torch
// reported an error). For checking the shim against Tensor's methods before a pass uses it.
pybind11::object shim_read(pybind11::handle methods, pybind11::handle plain, pybind11::handle t);

// What the layout in `methods` (see gather_rows) reads of `t`: the addresses of its TensorImpl,
// that one's storage and autograd meta (0: none), the gradient's TensorImpl in that meta (0: no
// meta) and t's Python object, then the two words where the fields begin (t's storage offset
// and size); None when there is no layout or t is not of a `plain` type (or is a borrowed
// tensor). For checking the layout against torch before a pass prefetches along it.
pybind11::object layout_read(pybind11::handle methods, pybind11::handle plain, pybind11::handle t);

// torch's C-level data-pointer reader (a tensor object to its data_ptr(); throws a C++
// exception for what it cannot read), as torch hands it to its own compiled kernels.
using AddressReader = void* (*)(PyObject*);

// `reader` (an AddressReader's address) applied to `t`; its C++ exceptions become Python errors.
// For checking a reader against Tensor.data_ptr before gather_rows is handed it.
uint64_t read_address(uint64_t reader, pybind11::handle t);

// What the native norm pass needs of `tensors` (a list), read in one pass with gather_rows'
// `methods`: true when every one is of a type in `plain`, on the CPU (its is_cpu is True), of
// layout `strided`, contiguous, and of a dtype `codes` (torch dtype -> kernel code) has; then
// ptrs[i], numels[i] and dtypes[i] hold each one's address, numel and code. False at the first
// that is not (the norm is left to torch); an exception raised by torch is cleared and reads as
// false. `getters` are Tensor's is_cpu and layout getset descriptors (None: attribute lookup),
// used like the .dtype getter in `methods`.
bool norm_table(pybind11::handle tensors, pybind11::handle codes, pybind11::handle methods, pybind11::handle plain,
                pybind11::handle strided, pybind11::handle getters, pybind11::array_t<uint64_t>& ptrs,
                pybind11::array_t<int64_t>& numels, pybind11::array_t<int32_t>& dtypes);

// For each parameter of `params` (exact torch.Tensor / Parameter objects): its .grad, and, when
// that is not None, checks that the gradient is a plain contiguous tensor, that gradient and
// parameter have numels[i] elements of dtype_objects[dtypes[i]], and that the parameter is
// contiguous and its storage starts at param_ptrs[i]; for the k-th gradient found, grad_ptrs[k]
// receives its address and rows[k] its row. Then checks that each of `state_tensors` is
// contiguous, has state_numels[j] elements of dtype_objects[state_dtypes[j]] and starts at
// state_ptrs[j].
//
// `methods` holds torch.Tensor's data_ptr, is_contiguous and numel, then the faster reads the
// caller checked against them, each optional: an AddressReader's address (0: none) and the tuple
// of exact types it reads; Tensor's .grad and .dtype getset descriptors (None: none), called
// directly for the types in `plain` (the plain tensor types) while attribute lookup on each of
// them finds these very descriptors; and last, torch's C shim for compiled code (is_contiguous,
// numel, dtype, data_ptr: the addresses of AOTInductor's aoti_torch_is_contiguous,
// aoti_torch_get_numel, aoti_torch_get_dtype and aoti_torch_get_data_ptr, each 0 when absent),
// the offset at which a plain tensor object holds the at::Tensor they take (16 or 24; 0: unknown)
// and torch's scalar type of each kernel dtype code, with which the contiguity, size, dtype and
// address of plain tensors are read without a call into torch's Python bindings; then the
// layout of torch's objects the pass prefetches along, (tensor, storage, meta, grad, pyobj,
// fields) or () when unknown: the offset of the at::Tensor in a tensor object (as for the shim),
// of the storage, autograd meta and Python object pointers in a TensorImpl, of the gradient in
// autograd meta, and of the TensorImpl's storage offset (its size, dtype and flags follow). The
// layout only decides what is prefetched, never what is read. The caller checked all of these
// against torch (shim_read, layout_read).
//
// Stops at the first difference (matched false); an exception raised by torch is cleared and
// reads as a difference. `checks` below 2 skips the state tensors, below 1 the parameters too
// (to price the checks). When `state` is a dict, also finds whether it holds the objects of
// `snapshot` (state_unchanged; Gathered::same). `parallel`: the caller allows a second thread
// to read parameters and state alongside (no torch function mode is on; see gather.cpp).
Gathered gather_rows(pybind11::handle params, const pybind11::array_t<int64_t>& numels,
                     const pybind11::array_t<int32_t>& dtypes, pybind11::handle dtype_objects,
                     const pybind11::array_t<uint64_t>& param_ptrs, pybind11::array_t<uint64_t>& grad_ptrs,
                     pybind11::array_t<int64_t>& rows, pybind11::handle state_tensors,
                     const pybind11::array_t<uint64_t>& state_ptrs, const pybind11::array_t<int64_t>& state_numels,
                     const pybind11::array_t<int32_t>& state_dtypes, pybind11::handle methods, pybind11::handle plain,
                     int checks, pybind11::handle state, const pybind11::array_t<uint64_t>& snapshot, bool parallel);

// Threads the calling thread's last gather_rows pass ran on: 2 when a second thread read
// alongside, 1 otherwise (0 before the first).
int last_gather_threads();

}  // namespace fastopt
