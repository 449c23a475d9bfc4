// The native tier's per-step read of a plan's rows: one pass over the parameters that takes
// each one's gradient and checks what the kernel will read (sizes, dtypes, contiguity,
// storage addresses), so every tensor's metadata is touched once per step.
#pragma once

#include <cstdint>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace fastopt {

// A plan's gradient holder: at::Tensor slots of its own, one per parameter (one word each,
// torch's undefined tensor while empty), in which a gather_rows pass holds the gradients it
// read instead of by their Python objects (torch's C shim assigns them, aoti_torch_assign_tensors:
// a reference taken, nothing allocated), and the pass's per-row scratch; made once per plan, so
// a step allocates nothing in proportion to its tensors. Released after the kernel has run
// (release(), or when this object goes), the GIL held: the last reference to a gradient may
// free its Python object.
class HeldGrads {
 public:
  using Assign = int32_t (*)(void*, void*);  // (source at::Tensor, destination at::Tensor)
  HeldGrads(Assign assign, uintptr_t undefined, std::size_t rows)
      : assign_(assign), undefined_(undefined), slots_(rows, undefined), how_(rows, 0) {}
  HeldGrads(const HeldGrads&) = delete;
  HeldGrads& operator=(const HeldGrads&) = delete;
  ~HeldGrads() { release(); }
  // Holds at::Tensor `at` in slot i (empty; threads may fill distinct slots at once): false
  // where the shim reported an error (nothing held).
  bool keep(std::size_t i, void* at) { return assign_(at, &slots_[i]) == 0; }
  // Keeps `object` (a gradient's Python object, a new reference is taken) alive instead.
  void keep_object(PyObject* object);
  // Empties every slot and drops the objects kept; count 0, not busy.
  void release();
  // Slot i, an at::Tensor.
  void* slot(std::size_t i) { return &slots_[i]; }
  std::size_t rows() const { return slots_.size(); }
  // One byte of scratch per row for a pass.
  uint8_t* how() { return how_.data(); }
  // How many gradients the last pass read (0 once released).
  std::size_t count = 0;
  // Whether a pass holds gradients here that have not been released (a pass that finds its
  // holder in use, a step within a step, holds by Python objects instead).
  bool busy = false;

 private:
  Assign assign_;
  uintptr_t undefined_;  // an undefined at::Tensor: what an emptied slot is assigned
  std::vector<uintptr_t> slots_;
  std::vector<uint8_t> how_;
  std::vector<PyObject*> objects_;
};

// A HeldGrads of `rows` slots for gather_rows' `methods`, or None where they cannot hold
// tensors (no shim assignment, no layout).
pybind11::object held_grads(pybind11::handle methods, pybind11::handle plain, std::size_t rows);

// What gather_rows found: whether every row matched the plan (else the caller checks the long
// way), and the gradients that are not None, in row order (their addresses and rows are in
// the first entries of gather_rows' grad_ptrs and rows): their Python objects in `grads`, or,
// where they were held in the caller's HeldGrads, `held` true (their number is its count).
struct Gathered {
  bool matched;
  pybind11::list grads;
  bool held;
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

// Holds `t` (a plain tensor) in a HeldGrads slot through the shim and layout in `methods` and
// reads its address through that slot; calls `during` while holding it and returns (during's
// result, the address), or None where the shim cannot hold t. For checking the slots against
// torch (one more reference while held: t._use_count() one higher) before gather_rows uses them.
pybind11::object hold_read(pybind11::handle methods, pybind11::handle plain, pybind11::handle t,
                           pybind11::handle during);

// torch's version-counter bump, torch::autograd::impl::bump_version (an at::Tensor's address in),
// as torch exports it; it throws torch's C++ error for a tensor that cannot change in place (an
// inference tensor outside inference mode).
using VersionBump = void (*)(void*);

// Counts one in-place change in the version counter of each tensor of `tensors` (a list), as
// torch's in-place ops do, through `bump` (a VersionBump's address) on the at::Tensor a plain
// tensor object holds (where the shim or layout of `methods` says); returns, in order, the ones
// it does not reach that way (not of a `plain` type, a borrowed tensor; every one where methods
// know no at::Tensor offset), for the caller to bump through torch. torch's error becomes a
// RuntimeError at the first tensor that raises it (the ones before it bumped). `version`: where
// a TensorImpl keeps its version counter's pointer (byte offset; 0: unknown), along which the
// pass prefetches the counters (never read by it otherwise).
pybind11::list bump_versions(pybind11::handle tensors, pybind11::handle methods, pybind11::handle plain,
                             uint64_t bump, Py_ssize_t version);

// The same for the gradients `held` holds.
void bump_held(HeldGrads& held, uint64_t bump);

// Resizes each tensor of `targets` (a list) in place to the sizes of the same item of
// `sources` (a list of tensors; None: to a 0-dim tensor), contiguous, as Tensor.resize_ does,
// through torch's C shim (`functions`: the addresses of aoti_torch_cpu_resize_, aoti_torch_get_dim,
// aoti_torch_get_sizes, aoti_torch_get_strides, aoti_torch_get_data_ptr, aoti_torch_get_storage_size
// and aoti_torch_get_storage_offset) on the at::Tensor each plain tensor object holds (where the
// shim or layout of `methods` says). `zero_itemsize` (the targets' element size; 0: none): each
// resized tensor's elements are then set to +0 in memory, as zero_ sets them but not through an
// op of torch's, so its version counter stays at 0 as a factory leaves it (only a tensor whose
// elements fill its storage exactly, from its start: a fresh one; the pass stops at another).
// Returns (how many were resized, from the first on: the pass stops at one it cannot resize that
// way, not plain or a shim error, for the caller to go on from; the indices among them whose
// strides now differ from their source's).
pybind11::tuple resize_like(pybind11::handle targets, pybind11::handle sources, pybind11::handle methods,
                            pybind11::handle plain, pybind11::handle functions, int64_t zero_itemsize);

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
// the offset at which a plain tensor object holds the at::Tensor they take (16 or 24; 0: unknown),
// torch's scalar type of each kernel dtype code, with which the contiguity, size, dtype and
// address of plain tensors are read without a call into torch's Python bindings, and the
// address of aoti_torch_assign_tensors as (assign,), or () (see `held`); then the layout of
// torch's objects, (tensor, storage, meta, grad, pyobj, fields, undefined) or () when unknown: the offset of the at::Tensor in a tensor object (as for the
// shim), of the storage, autograd meta and Python object pointers in a TensorImpl, of the
// gradient in autograd meta, and of the TensorImpl's storage offset (its size, dtype and flags
// follow), and what an undefined gradient points to. The pass prefetches along the layout and
// finds gradients along it, a gradient then read through the shim only. The caller checked all
// of these against torch (shim_read, layout_read, hold_read).
//
// Stops at the first difference (matched false); an exception raised by torch is cleared and
// reads as a difference. `checks` below 2 skips the state tensors, below 1 the parameters too
// (to price the checks). When `state` is a dict, also finds whether it holds the objects of
// `snapshot` (state_unchanged; Gathered::same). `parallel`: no torch function mode is on, so
// other threads (up to `threads` in all) may read parameters and state alongside and a gradient
// may be read without its .grad getter (see gather.cpp). `held` (a HeldGrads of one slot per parameter, or None):
// the caller needs the gradients' Python objects for nothing but keeping them alive, so where
// a gradient can be read without its getter it is held there instead (a holder in use, busy,
// is left alone: the pass holds by objects then), and one that has no Python object yet (a
// gradient from backward) is read without making one.
Gathered gather_rows(pybind11::handle params, const pybind11::array_t<int64_t>& numels,
                     const pybind11::array_t<int32_t>& dtypes, pybind11::handle dtype_objects,
                     const pybind11::array_t<uint64_t>& param_ptrs, pybind11::array_t<uint64_t>& grad_ptrs,
                     pybind11::array_t<int64_t>& rows, pybind11::handle state_tensors,
                     const pybind11::array_t<uint64_t>& state_ptrs, const pybind11::array_t<int64_t>& state_numels,
                     const pybind11::array_t<int32_t>& state_dtypes, pybind11::handle methods, pybind11::handle plain,
                     int checks, pybind11::handle state, const pybind11::array_t<uint64_t>& snapshot, bool parallel,
                     int threads, pybind11::handle held);

// Threads the calling thread's last gather_rows pass ran on: the team that read alongside, 1
// when the calling thread read alone (0 before the first).
int last_gather_threads();

}  // namespace fastopt
