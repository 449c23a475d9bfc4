// One pass over a plan's parameters through the Python C API: the gradient of each and the
// checks the kernel's table relies on, with the objects of the parameters ahead prefetched
// along torch's pointers (tensor object, TensorImpl, storage, autograd meta, gradient), so each
// tensor's metadata is brought into cache once per step, many tensors at a time. Addresses
// are read with torch's own C-level reader where this torch has one (no Python call, no int
// object per read), and .grad/.dtype through their getters without attribute lookup.
#include "gather.h"

#include "identity.h"
#include "prefetch.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace fastopt {
namespace {

// How many items ahead a loop prefetches the Python objects when the layout is unknown.
constexpr Py_ssize_t kAhead = 8;
// With the layout: how many parameters apart the stages of the gradient chain run, and how
// many tensors apart the stages of a tensor's (object, TensorImpl, storage) run.
constexpr Py_ssize_t kParamStage = 2;
constexpr Py_ssize_t kTensorStage = 8;
// How many tensors apart the stages of the version count's chain (object, TensorImpl, counter)
// run: its body is a short call, so the prefetches need more tensors in flight than the reads'
// (5,000 parameters of a model after a 64 MB write, five alternating processes: 88-129 us with
// 8 apart; 64-76 us with 32 in four of them, 144 us in the fifth).
constexpr Py_ssize_t kBumpStage = 32;
// From how many parameters and state tensors several threads read them (waking a team costs
// some microseconds), and how many items each thread of the team should have at least.
constexpr Py_ssize_t kParallelItems = 512;
constexpr Py_ssize_t kItemsPerThread = kParallelItems / 2;
// How many state tensors, and how many parameters, a thread takes at a time then.
constexpr Py_ssize_t kStateBlock = 256;
constexpr Py_ssize_t kParamBlock = 128;

// Threads of the calling thread's last gather_rows pass (last_gather_threads).
thread_local int last_threads = 0;

// Where torch keeps the pointers a read follows (byte offsets, see gather.h); tensor 0: unknown.
struct Layout {
  Py_ssize_t tensor = 0;
  Py_ssize_t storage = 0;
  Py_ssize_t meta = 0;
  Py_ssize_t grad = 0;
  Py_ssize_t pyobj = 0;
  Py_ssize_t fields = 0;  // the storage offset, then size, dtype, device, dispatch keys and flags
  uintptr_t undefined = 0;  // what an undefined at::Tensor (no gradient) points to
};

// How far past the storage offset a TensorImpl's fields that the shim reads reach (the size,
// dtype, device, dispatch keys and the flag bits after them).
constexpr Py_ssize_t kFieldsSpan = 40;

// torch's C shim for compiled code (AOTInductor's aoti_torch_* functions: an at::Tensor's address
// in, 0 returned and the answer written on success), and where a plain tensor object holds the
// at::Tensor they take (see gather.h). offset 0: none.
struct Shim {
  int32_t (*is_contiguous)(void*, bool*) = nullptr;
  int32_t (*numel)(void*, int64_t*) = nullptr;
  int32_t (*dtype)(void*, int32_t*) = nullptr;
  int32_t (*data_ptr)(void*, void**) = nullptr;
  HeldGrads::Assign assign = nullptr;  // at::Tensor assignment (null: none)
  Py_ssize_t offset = 0;
  std::vector<int32_t> scalar_types;  // torch's scalar type of each kernel dtype code
};

// How the pass reads a tensor: torch.Tensor's methods, and, where the caller found them,
// faster ways to the same answers (see gather.h).
struct Methods {
  PyObject* data_ptr;
  PyObject* is_contiguous;
  PyObject* numel;
  AddressReader address;  // torch's own C-level reader, or null
  PyObject* address_types;  // the exact types `address` reads (a tuple)
  PyGetSetDef* grad;  // Tensor's .grad and .dtype getters, or null: attribute lookup
  PyGetSetDef* dtype;
  Shim shim;
  Layout layout;
  PyObject* plain;  // the exact types the getters, the shim and the layout are used for
};

PyObject* call(PyObject* fn, PyObject* t) { return PyObject_Vectorcall(fn, &t, 1, nullptr); }

bool is_one_of(PyObject* t, PyObject* types) {
  const Py_ssize_t n = PyTuple_GET_SIZE(types);
  for (Py_ssize_t i = 0; i < n; ++i)
    if (reinterpret_cast<PyObject*>(Py_TYPE(t)) == PyTuple_GET_ITEM(types, i)) return true;
  return false;
}

// The at::Tensor a plain tensor object holds at `offset` (16, or 24 on torch releases whose
// tensor object may borrow its tensor, a flag byte before it), or null: offset 0 (unknown), not
// of a `plain` type, or a borrowed one.
char* tensor_at(PyObject* plain, Py_ssize_t offset, PyObject* t) {
  if (offset == 0 || !is_one_of(t, plain)) return nullptr;
  char* base = reinterpret_cast<char*>(t);
  if (offset == 24 && base[16] != 0) return nullptr;
  return base + offset;
}

// The at::Tensor of `t` for the shim (null: no shim, or see tensor_at).
void* tensor_of(const Methods& m, PyObject* t) { return tensor_at(m.plain, m.shim.offset, t); }

// Where a plain tensor object holds its at::Tensor as the shim or else the layout found it (0:
// neither), for calls into torch that take an at::Tensor without needing the shim's readers.
Py_ssize_t held_tensor_offset(const Methods& m) { return m.shim.offset != 0 ? m.shim.offset : m.layout.tensor; }

bool address_of(const Methods& m, PyObject* t, uint64_t* out) {
  if (void* h = tensor_of(m, t)) {
    void* p = nullptr;
    if (m.shim.data_ptr(h, &p) != 0) return false;  // (no storage, say): the long way raises torch's error
    *out = reinterpret_cast<uint64_t>(p);
    return true;
  }
  if (m.address != nullptr && is_one_of(t, m.address_types)) {
    try {
      *out = reinterpret_cast<uint64_t>(m.address(t));
      return true;
    } catch (...) {  // (no storage, say): a difference; the long way raises torch's error
      return false;
    }
  }
  PyObject* r = call(m.data_ptr, t);
  if (r == nullptr) return false;
  const unsigned long long v = PyLong_AsUnsignedLongLong(r);
  Py_DECREF(r);
  if (PyErr_Occurred() != nullptr) return false;
  *out = static_cast<uint64_t>(v);
  return true;
}

// t.<name> through the getter when `get` is set (the caller checked that it is the one
// attribute lookup would find for t's type), else by attribute lookup.
PyObject* attribute(PyGetSetDef* get, PyObject* t, PyObject* name) {
  if (get != nullptr) return get->get(t, get->closure);
  return PyObject_GetAttr(t, name);
}

bool numel_of(const Methods& m, PyObject* t, int64_t* out) {
  if (void* h = tensor_of(m, t)) return m.shim.numel(h, out) == 0;
  PyObject* r = call(m.numel, t);
  if (r == nullptr) return false;
  const long long v = PyLong_AsLongLong(r);
  Py_DECREF(r);
  *out = static_cast<int64_t>(v);
  return PyErr_Occurred() == nullptr;
}

bool has_numel(const Methods& m, PyObject* t, int64_t want) {
  int64_t v = 0;
  return numel_of(m, t, &v) && v == want;
}

bool is_contiguous(const Methods& m, PyObject* t) {
  if (void* h = tensor_of(m, t)) {
    bool yes = false;
    return m.shim.is_contiguous(h, &yes) == 0 && yes;
  }
  PyObject* r = call(m.is_contiguous, t);
  const bool yes = r == Py_True;
  Py_XDECREF(r);
  return yes;
}

// The kernel dtype code of at::Tensor h's dtype through the shim (-1: not a kernel dtype), or
// -2 when the shim cannot read it (h null included).
int code_at(const Methods& m, void* h) {
  int32_t st = 0;
  if (h == nullptr || m.shim.dtype(h, &st) != 0) return -2;
  const auto& types = m.shim.scalar_types;
  for (std::size_t c = 0; c < types.size(); ++c)
    if (types[c] == st) return static_cast<int>(c);
  return -1;
}

// The same of tensor object t (-2: see tensor_of).
int shim_code(const Methods& m, PyObject* t) { return code_at(m, tensor_of(m, t)); }

// Whether t.<name> is the object `want` (the getter `get` when set, see attribute()).
bool has_value(PyGetSetDef* get, PyObject* t, PyObject* name, PyObject* want) {
  PyObject* r = attribute(get, t, name);
  const bool yes = r == want;
  Py_XDECREF(r);
  return yes;
}

// Whether t's dtype is the kernel dtype `code` (the torch dtype `want`): through the shim where it
// reads t, else by t.<name> (the getter `get` when set, see attribute()).
bool has_dtype(const Methods& m, PyObject* t, PyGetSetDef* get, PyObject* name, int32_t code, PyObject* want) {
  const int c = shim_code(m, t);
  if (c != -2) return c == code;
  return has_value(get, t, name, want);
}

// The getter of `descr` (a getset descriptor) when attribute lookup finds `descr` for every
// type in `types`, else null (a type that overrides the attribute: look it up each time).
PyGetSetDef* getter_for(PyObject* descr, PyObject* types, PyObject* name) {
  if (descr == Py_None || Py_TYPE(descr) != &PyGetSetDescr_Type) return nullptr;
  const Py_ssize_t n = PyTuple_GET_SIZE(types);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* type = PyTuple_GET_ITEM(types, i);
    if (!PyType_Check(type) || _PyType_Lookup(reinterpret_cast<PyTypeObject*>(type), name) != descr) return nullptr;
  }
  return reinterpret_cast<PyGetSetDescrObject*>(descr)->d_getset;
}

// The pointer at byte `offset` of the object at `base`.
char* word(const void* base, Py_ssize_t offset) {
  return *reinterpret_cast<char* const*>(static_cast<const char*>(base) + offset);
}

// Prefetches `lines` cache lines from p on.
void prefetch_lines(const char* p, int lines) {
  for (int k = 0; k < lines; ++k) prefetch(p + 64 * k);
}

// The TensorImpl of tensor object `t` (null: not a plain type, or a borrowed tensor).
char* impl_of(const Methods& m, PyObject* t) {
  char* tensor = tensor_at(m.plain, m.layout.tensor, t);
  return tensor == nullptr ? nullptr : word(tensor, 0);
}

// The item `i` of `list`, or null outside it (its length read again: what the list holds now).
PyObject* item(PyObject* list, Py_ssize_t i) {
  return i >= 0 && i < PyList_GET_SIZE(list) ? PyList_GET_ITEM(list, i) : nullptr;
}

// Prefetches the lines of a TensorImpl the pass reads: its storage and autograd meta pointers,
// its Python object's (`pyobj`) and the fields from the storage offset on, not the sizes and
// strides between them.
void prefetch_impl(const Layout& l, const char* impl, bool pyobj) {
  prefetch(impl + l.storage);
  prefetch(impl + l.meta);
  if (pyobj) prefetch(impl + l.pyobj);
  prefetch(impl + l.fields);
  prefetch(impl + l.fields + kFieldsSpan);
}

// Prefetching ahead of item i of a list of tensors read for their metadata: the objects
// 3 stages ahead, their TensorImpls 2 ahead, their storages 1 ahead (each stage reads what the
// one before brought in). The items' Python objects alone without the layout.
void prefetch_tensors(const Methods& m, PyObject* list, Py_ssize_t i) {
  if (m.layout.tensor == 0) {
    if (PyObject* t = item(list, i + kAhead)) prefetch(t);
    return;
  }
  constexpr Py_ssize_t d = kTensorStage;
  if (PyObject* t = item(list, i + 3 * d)) prefetch(t);
  if (PyObject* t = item(list, i + 2 * d))
    if (char* impl = impl_of(m, t)) prefetch_impl(m.layout, impl, false);
  if (PyObject* t = item(list, i + d))
    if (char* impl = impl_of(m, t)) prefetch_lines(word(impl, m.layout.storage), 2);
}

// The same ahead of parameter i, along the chain its .grad read follows too: object, TensorImpl,
// its storage and autograd meta, the gradient's TensorImpl, the gradient's storage and object.
void prefetch_params(const Methods& m, PyObject* list, Py_ssize_t i) {
  if (m.layout.tensor == 0) {
    if (PyObject* t = item(list, i + kAhead)) prefetch(t);
    return;
  }
  const Layout& l = m.layout;
  constexpr Py_ssize_t d = kParamStage;
  if (PyObject* t = item(list, i + 5 * d)) prefetch(t);
  if (PyObject* t = item(list, i + 4 * d))
    if (char* impl = impl_of(m, t)) prefetch_impl(l, impl, false);
  if (PyObject* t = item(list, i + 3 * d))
    if (char* impl = impl_of(m, t)) {
      prefetch_lines(word(impl, l.storage), 2);
      if (char* meta = word(impl, l.meta)) prefetch(meta + l.grad);
    }
  if (PyObject* t = item(list, i + 2 * d))
    if (char* impl = impl_of(m, t))
      if (char* meta = word(impl, l.meta))
        if (char* grad = word(meta, l.grad)) prefetch_impl(l, grad, true);
  if (PyObject* t = item(list, i + d))
    if (char* impl = impl_of(m, t))
      if (char* meta = word(impl, l.meta))
        if (char* grad = word(meta, l.grad)) {
          prefetch_lines(word(grad, l.storage), 2);
          prefetch(word(grad, l.pyobj));
        }
}

template <typename T>
const T* vector_of(const py::array_t<T>& a, Py_ssize_t n, const char* what) {
  if (a.ndim() != 1 || a.shape(0) != n)
    throw std::invalid_argument(std::string("gather_rows: ") + what + " must be 1-D, one per item");
  return a.data();
}

template <typename T>
T* mutable_vector(py::array_t<T>& a, Py_ssize_t n, const char* what) {
  if (a.ndim() != 1 || a.shape(0) != n)
    throw std::invalid_argument(std::string("norm_table: ") + what + " must be 1-D, one per item");
  return a.mutable_data();
}

// methods[7]: (is_contiguous, numel, dtype, data_ptr, offset, scalar_types, handles), the shim's
// four function addresses (0: none), where a plain tensor object holds its at::Tensor (0:
// nowhere known), torch's scalar type per kernel dtype code, and (assign_tensors,) or ().
Shim shim_of(PyObject* t) {
  if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 7 || !PyTuple_Check(PyTuple_GET_ITEM(t, 5)) ||
      !PyTuple_Check(PyTuple_GET_ITEM(t, 6)) ||
      PyTuple_GET_SIZE(PyTuple_GET_ITEM(t, 6)) > 1)
    throw py::type_error(
        "methods[7] must be (is_contiguous, numel, dtype, data_ptr, offset, scalar_types, handles), handles "
        "(assign_tensors,) or ()");
  uint64_t fn[4];
  for (int i = 0; i < 4; ++i) fn[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, i));
  const Py_ssize_t offset = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 4));
  if (PyErr_Occurred() != nullptr) throw py::error_already_set();
  if (offset != 0 && offset != 16 && offset != 24)
    throw std::invalid_argument("methods[7]: a tensor object holds its at::Tensor at 16 or 24 (0: unknown)");
  Shim s;
  if (offset == 0 || fn[0] == 0 || fn[1] == 0 || fn[2] == 0 || fn[3] == 0) return s;
  s.is_contiguous = reinterpret_cast<int32_t (*)(void*, bool*)>(fn[0]);
  s.numel = reinterpret_cast<int32_t (*)(void*, int64_t*)>(fn[1]);
  s.dtype = reinterpret_cast<int32_t (*)(void*, int32_t*)>(fn[2]);
  s.data_ptr = reinterpret_cast<int32_t (*)(void*, void**)>(fn[3]);
  PyObject* types = PyTuple_GET_ITEM(t, 5);
  for (Py_ssize_t c = 0; c < PyTuple_GET_SIZE(types); ++c) {
    s.scalar_types.push_back(static_cast<int32_t>(PyLong_AsLong(PyTuple_GET_ITEM(types, c))));
    if (PyErr_Occurred() != nullptr) throw py::error_already_set();
  }
  PyObject* handles = PyTuple_GET_ITEM(t, 6);
  if (PyTuple_GET_SIZE(handles) == 1) {
    const uint64_t assign = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(handles, 0));
    if (PyErr_Occurred() != nullptr) throw py::error_already_set();
    s.assign = reinterpret_cast<HeldGrads::Assign>(assign);
  }
  s.offset = offset;
  return s;
}

// methods[8]: (tensor, storage, meta, grad, pyobj, fields) byte offsets and the address of
// torch's undefined tensor, or () when unknown.
Layout layout_of(PyObject* t) {
  if (!PyTuple_Check(t) || (PyTuple_GET_SIZE(t) != 0 && PyTuple_GET_SIZE(t) != 7))
    throw py::type_error("methods[8] must be (tensor, storage, meta, grad, pyobj, fields, undefined) or ()");
  if (PyTuple_GET_SIZE(t) == 0) return Layout{};
  Py_ssize_t v[6];
  for (int i = 0; i < 6; ++i) v[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, i));
  const uint64_t undefined = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t, 6));
  if (PyErr_Occurred() != nullptr) throw py::error_already_set();
  if (undefined == 0) throw std::invalid_argument("methods[8]: the undefined tensor's address is not 0");
  if (v[0] != 16 && v[0] != 24) throw std::invalid_argument("methods[8]: a tensor object holds its at::Tensor at 16 or 24");
  for (int i = 1; i < 6; ++i)
    if (v[i] <= 0 || v[i] % 8 != 0 || v[i] >= (i == 5 ? 256 : 128))
      throw std::invalid_argument("methods[8]: offsets are multiples of 8 in (0, 128), the fields' in (0, 256)");
  return Layout{v[0], v[1], v[2], v[3], v[4], v[5], static_cast<uintptr_t>(undefined)};
}

// The reads `methods` (gather_rows' argument) name, the getters checked for the `plain` types.
Methods methods_of(PyObject* methods, PyObject* plain, PyObject* dtype_name) {
  if (!PyTuple_Check(methods) || PyTuple_GET_SIZE(methods) != kMethods ||
      !PyTuple_Check(PyTuple_GET_ITEM(methods, 4)) || !PyTuple_Check(plain))
    throw py::type_error("methods must be a tuple of " + std::to_string(kMethods) + " (see gather.h), plain a tuple");
  PyObject* const* mt = &PyTuple_GET_ITEM(methods, 0);
  const uint64_t reader = PyLong_AsUnsignedLongLong(mt[3]);
  if (PyErr_Occurred() != nullptr) throw py::error_already_set();
  const py::str grad_name("grad");
  return Methods{mt[0],
                 mt[1],
                 mt[2],
                 reinterpret_cast<AddressReader>(reader),
                 mt[4],
                 getter_for(mt[5], plain, grad_name.ptr()),
                 getter_for(mt[6], plain, dtype_name),
                 shim_of(mt[7]),
                 layout_of(mt[8]),
                 plain};
}

// body(i) for the parameters of `list` in [from, to), prefetching ahead along them
// (prefetch_params); false at the first body that returns false.
template <typename Body>
bool walk_params(const Methods& m, PyObject* list, Py_ssize_t from, Py_ssize_t to, const Body& body) {
  for (Py_ssize_t i = from - 5 * kParamStage; i < from; ++i) prefetch_params(m, list, i);
  for (Py_ssize_t i = from; i < to; ++i) {
    prefetch_params(m, list, i);
    if (!body(i)) return false;
  }
  return true;
}

// A plan's state tensors as gather_rows checks them: address, size and dtype code of each.
struct States {
  const uint64_t* ptrs;
  const int64_t* numels;
  const int32_t* dtypes;
};

// Whether the shim reads at::Tensor `h` as contiguous, of `numel` elements and of kernel dtype
// `code`, and where it starts (in *address). Only what the shim reads, with no Python call and
// no reference count touched (see check_states); false where the shim cannot read h (null
// included).
bool matches_at(const Methods& m, void* h, int64_t numel, int32_t code, uint64_t* address) {
  const auto& types = m.shim.scalar_types;
  int64_t count = 0;
  int32_t scalar_type = 0;
  bool contiguous = false;
  void* at = nullptr;
  if (h == nullptr || code < 0 || static_cast<std::size_t>(code) >= types.size() || m.shim.numel(h, &count) != 0 ||
      count != numel || m.shim.dtype(h, &scalar_type) != 0 || scalar_type != types[static_cast<std::size_t>(code)] ||
      m.shim.is_contiguous(h, &contiguous) != 0 || !contiguous || m.shim.data_ptr(h, &at) != 0)
    return false;
  *address = reinterpret_cast<uint64_t>(at);
  return true;
}

// The same of tensor object t (false: see tensor_of).
bool shim_matches(const Methods& m, PyObject* t, int64_t numel, int32_t code, uint64_t* address) {
  return matches_at(m, tensor_of(m, t), numel, code, address);
}

// The state tensors of `list` checked in [from, to): each contiguous, of the size and dtype
// `st` gives and at its address (an in-place resize_, as_strided_, t_ or .data = a view as
// another dtype keeps the address). Returns the index of the first that differs, or `to`.
// A plain tensor the shim reads is read through it alone (shim_matches: a shim error counts as a
// difference, for the long way to raise); others through Tensor's methods. `nogil`: the shim
// alone, with no Python call and no reference count touched, so that a thread without the GIL
// may run it while the one holding it runs no Python code; a tensor it cannot read that way
// counts as a difference.
Py_ssize_t check_states(const Methods& m, PyObject* list, Py_ssize_t from, Py_ssize_t to, const States& st,
                        PyObject* dtype_objects, PyObject* plain, PyObject* dtype_name, bool nogil) {
  const Py_ssize_t n_dtypes = PyTuple_GET_SIZE(dtype_objects);
  for (Py_ssize_t j = from - 3 * kTensorStage; j < from; ++j) prefetch_tensors(m, list, j);
  for (Py_ssize_t j = from; j < to; ++j) {
    prefetch_tensors(m, list, j);
    PyObject* t = PyList_GET_ITEM(list, j);
    const int32_t code = st.dtypes[j];
    uint64_t sp = 0;
    bool ok = false;
    if (nogil || tensor_of(m, t) != nullptr) {  // (a plain tensor the shim reads: its four reads at once)
      ok = shim_matches(m, t, st.numels[j], code, &sp);
    } else {
      PyObject* want = code >= 0 && code < n_dtypes ? PyTuple_GET_ITEM(dtype_objects, code) : nullptr;
      ok = want != nullptr && has_numel(m, t, st.numels[j]) &&
           has_dtype(m, t, is_one_of(t, plain) ? m.dtype : nullptr, dtype_name, code, want) && is_contiguous(m, t) &&
           address_of(m, t, &sp);
    }
    if (!ok || sp != st.ptrs[j]) return j;
  }
  return to;
}

// Whether `m` can hold tensors in HeldGrads slots: the shim's assignment, and the layout (whose
// undefined tensor an empty slot holds).
bool can_hold(const Methods& m) { return m.shim.assign != nullptr && m.shim.offset != 0 && m.layout.tensor != 0; }

}  // namespace

void HeldGrads::release() {
  // (the TensorImpls' reference counts prefetched some slots ahead, for writing: they are cold by
  // now, or held by the thread of the pass that took them; 4,000 gradients after a 256 MB write:
  // 75-100 us with a plain prefetch, 61-70 us with this one)
  constexpr std::size_t ahead = 16;
  const std::size_t n = slots_.size();
  for (std::size_t i = 0; i < n; ++i) {
    if (i + ahead < n && slots_[i + ahead] != undefined_)
      prefetch_for_write(reinterpret_cast<const char*>(slots_[i + ahead]));
    if (slots_[i] != undefined_) assign_(&undefined_, &slots_[i]);
  }
  std::vector<PyObject*> objects;
  objects.swap(objects_);
  for (PyObject* o : objects) Py_DECREF(o);
  count = 0;
  busy = false;
}

py::object held_grads(py::handle methods, py::handle plain, std::size_t rows) {
  const py::str dtype_name("dtype");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  if (!can_hold(m)) return py::none();
  return py::cast(std::make_unique<HeldGrads>(m.shim.assign, m.layout.undefined, rows));
}

void HeldGrads::keep_object(PyObject* object) {
  Py_INCREF(object);
  objects_.push_back(object);
}

int last_gather_threads() { return last_threads; }

py::object hold_read(py::handle methods, py::handle plain, py::handle t, py::handle during) {
  const py::str dtype_name("dtype");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  void* at = tensor_of(m, t.ptr());
  if (at == nullptr || !can_hold(m)) return py::none();
  HeldGrads held(m.shim.assign, m.layout.undefined, 1);
  if (!held.keep(0, at)) return py::none();
  const py::object seen = py::reinterpret_borrow<py::object>(during)();
  void* address = nullptr;
  if (m.shim.data_ptr(held.slot(0), &address) != 0) return py::none();
  return py::make_tuple(seen, reinterpret_cast<uint64_t>(address));
}

py::object shim_read(py::handle methods, py::handle plain, py::handle t) {
  const py::str dtype_name("dtype");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  void* h = tensor_of(m, t.ptr());
  if (h == nullptr) return py::none();
  bool contiguous = false;
  int64_t numel = 0;
  int32_t scalar_type = 0;
  void* address = nullptr;
  if (m.shim.is_contiguous(h, &contiguous) != 0 || m.shim.numel(h, &numel) != 0 ||
      m.shim.dtype(h, &scalar_type) != 0 || m.shim.data_ptr(h, &address) != 0)
    return py::none();
  return py::make_tuple(contiguous, numel, scalar_type, reinterpret_cast<uint64_t>(address));
}

py::object layout_read(py::handle methods, py::handle plain, py::handle t) {
  const py::str dtype_name("dtype");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  if (m.layout.tensor == 0) return py::none();
  char* impl = impl_of(m, t.ptr());
  if (impl == nullptr) return py::none();
  const Layout& l = m.layout;
  char* meta = word(impl, l.meta);
  const auto address = [](const void* p) { return reinterpret_cast<uint64_t>(p); };
  const auto field = [&](Py_ssize_t at) { return *reinterpret_cast<const int64_t*>(impl + l.fields + at); };
  return py::make_tuple(address(impl), address(word(impl, l.storage)), address(meta),
                        address(meta == nullptr ? nullptr : word(meta, l.grad)), address(word(impl, l.pyobj)),
                        field(0), field(8));
}

uint64_t read_address(uint64_t reader, py::handle t) {
  if (reader == 0) throw std::invalid_argument("read_address: no reader");
  try {
    return reinterpret_cast<uint64_t>(reinterpret_cast<AddressReader>(reader)(t.ptr()));
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("read_address: ") + e.what());
  } catch (...) {
    throw std::runtime_error("read_address: the reader raised");
  }
}

bool norm_table(py::handle tensors, py::handle codes, py::handle methods, py::handle plain, py::handle strided,
                py::handle getters, py::array_t<uint64_t>& ptrs, py::array_t<int64_t>& numels,
                py::array_t<int32_t>& dtypes) {
  if (!PyList_Check(tensors.ptr()) || !PyDict_Check(codes.ptr()) || !PyTuple_Check(plain.ptr()) ||
      !PyTuple_Check(getters.ptr()) || PyTuple_GET_SIZE(getters.ptr()) != 2)
    throw py::type_error("norm_table: tensors must be a list, codes a dict; plain and getters tuples");
  PyObject* list = tensors.ptr();
  const Py_ssize_t n = PyList_GET_SIZE(list);
  uint64_t* ptr = mutable_vector(ptrs, n, "ptrs");
  int64_t* numel = mutable_vector(numels, n, "numels");
  int32_t* dtype = mutable_vector(dtypes, n, "dtypes");
  const py::str dtype_name("dtype");
  const py::str cpu_name("is_cpu");
  const py::str layout_name("layout");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  PyGetSetDef* const is_cpu = getter_for(PyTuple_GET_ITEM(getters.ptr(), 0), plain.ptr(), cpu_name.ptr());
  PyGetSetDef* const layout = getter_for(PyTuple_GET_ITEM(getters.ptr(), 1), plain.ptr(), layout_name.ptr());
  bool ok = true;
  for (Py_ssize_t i = -3 * kTensorStage; i < 0; ++i) prefetch_tensors(m, list, i);
  for (Py_ssize_t i = 0; ok && i < n; ++i) {
    prefetch_tensors(m, list, i);
    PyObject* t = PyList_GET_ITEM(list, i);
    ok = is_one_of(t, plain.ptr()) && has_value(is_cpu, t, cpu_name.ptr(), Py_True) &&
         has_value(layout, t, layout_name.ptr(), strided.ptr()) && is_contiguous(m, t);
    if (!ok) break;
    long c = shim_code(m, t);
    if (c == -2) {
      PyObject* d = attribute(m.dtype, t, dtype_name.ptr());
      PyObject* code = d == nullptr ? nullptr : PyDict_GetItemWithError(codes.ptr(), d);  // (borrowed)
      Py_XDECREF(d);
      c = code == nullptr ? -1 : PyLong_AsLong(code);
    }
    ok = c >= 0 && numel_of(m, t, &numel[i]) && address_of(m, t, &ptr[i]);
    dtype[i] = static_cast<int32_t>(c);
  }
  if (PyErr_Occurred() != nullptr) PyErr_Clear();  // (a torch error reads as "not natively readable")
  return ok;
}

Gathered gather_rows(py::handle params, const py::array_t<int64_t>& numels, const py::array_t<int32_t>& dtypes,
                     py::handle dtype_objects, const py::array_t<uint64_t>& param_ptrs,
                     py::array_t<uint64_t>& grad_ptrs, py::array_t<int64_t>& rows, py::handle state_tensors,
                     const py::array_t<uint64_t>& state_ptrs, const py::array_t<int64_t>& state_numels,
                     const py::array_t<int32_t>& state_dtypes, py::handle methods, py::handle plain, int checks,
                     py::handle state, const py::array_t<uint64_t>& snapshot, bool parallel, int threads,
                     py::handle held_by) {
  if (!PyList_Check(params.ptr()) || !PyList_Check(state_tensors.ptr()) || !PyTuple_Check(dtype_objects.ptr()) ||
      !PyTuple_Check(plain.ptr()))
    throw py::type_error("gather_rows: params and state_tensors must be lists; dtype_objects and plain tuples");
  const bool want_same = !state.is_none();
  if (want_same && (!PyDict_Check(state.ptr()) || snapshot.ndim() != 1))
    throw py::type_error("gather_rows: state must be a dict (or None) and snapshot 1-D");
  PyObject* plist = params.ptr();
  PyObject* slist = state_tensors.ptr();
  const Py_ssize_t n = PyList_GET_SIZE(plist);
  const Py_ssize_t ns = PyList_GET_SIZE(slist);
  const int64_t* numel = vector_of(numels, n, "numels");
  const int32_t* dtype = vector_of(dtypes, n, "dtypes");
  const uint64_t* pptr = vector_of(param_ptrs, n, "param_ptrs");
  const States st{vector_of(state_ptrs, ns, "state_ptrs"), vector_of(state_numels, ns, "state_numels"),
                  vector_of(state_dtypes, ns, "state_dtypes")};
  if (grad_ptrs.ndim() != 1 || grad_ptrs.shape(0) != n || rows.ndim() != 1 || rows.shape(0) != n)
    throw std::invalid_argument("gather_rows: grad_ptrs and rows must be 1-D, one per item");
  const uint64_t* snap = want_same ? snapshot.data() : nullptr;
  const auto n_snap = want_same ? static_cast<std::size_t>(snapshot.shape(0)) : std::size_t{0};
  uint64_t* gptr = grad_ptrs.mutable_data();
  int64_t* row = rows.mutable_data();
  const py::str grad_name("grad");
  const py::str dtype_name("dtype");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  PyObject* const dtypes_of = dtype_objects.ptr();
  const Py_ssize_t n_dtypes = PyTuple_GET_SIZE(dtypes_of);
  // Gradients read without the getter where no torch function mode could see the .grad read
  // (`parallel`), and held in the caller's slots instead of by Python objects where it gave some.
  const bool quick = parallel && checks >= 2 && m.shim.offset != 0 && m.grad != nullptr && m.dtype != nullptr &&
                     m.layout.tensor != 0;
  HeldGrads* held = nullptr;
  if (!held_by.is_none()) {
    held = py::cast<HeldGrads*>(held_by);
    if (held->rows() != static_cast<std::size_t>(n))
      throw std::invalid_argument("gather_rows: held must have one slot per parameter");
    if (!quick || held->busy)
      held = nullptr;
    else
      held->busy = true;
  }
  const bool hold = held != nullptr;
  Gathered out{false, py::list(), hold, -1};
  PyObject* grads = out.grads.ptr();

  // Records gradient g of row i, which starts at `address`, as read (appended to the list, or
  // counted where `hold`, held already): false where the list could not grow. Rows are taken in
  // order, so the k-th gradient's entries overwrite nothing of a row after it.
  const auto take = [&](Py_ssize_t i, PyObject* g, uint64_t address) {
    const auto k = hold ? static_cast<Py_ssize_t>(held->count) : PyList_GET_SIZE(grads);
    gptr[k] = address;
    row[k] = static_cast<int64_t>(i);
    if (!hold) return PyList_Append(grads, g) == 0;
    ++held->count;
    return true;
  };

  // Keeps gradient object g of row i (plain, checked) alive in `held`: in its slot, or where
  // the shim cannot read g, by the object itself.
  const auto hold_object = [&](Py_ssize_t i, PyObject* g) {
    void* at = tensor_of(m, g);
    if (at == nullptr || !held->keep(static_cast<std::size_t>(i), at)) held->keep_object(g);
    return true;
  };

  // Parameter i's gradient and checks, the GIL held: false at a difference.
  const auto read_param = [&](Py_ssize_t i) {
    PyObject* p = PyList_GET_ITEM(plist, i);
    const bool p_plain = is_one_of(p, plain.ptr());
    PyObject* g = attribute(p_plain ? m.grad : nullptr, p, grad_name.ptr());
    if (g == nullptr) return false;
    if (g == Py_None) {
      Py_DECREF(g);
      return true;
    }
    const int32_t code = dtype[i];
    PyObject* want = code >= 0 && code < n_dtypes ? PyTuple_GET_ITEM(dtypes_of, code) : nullptr;
    uint64_t gp = 0;
    uint64_t pp = 0;
    const bool ok = want != nullptr && is_one_of(g, plain.ptr()) && is_contiguous(m, g) &&
                    has_numel(m, g, numel[i]) && has_dtype(m, g, m.dtype, dtype_name.ptr(), code, want) &&
                    address_of(m, g, &gp) &&
                    (checks < 1 || (has_numel(m, p, numel[i]) &&
                                    has_dtype(m, p, p_plain ? m.dtype : nullptr, dtype_name.ptr(), code, want) &&
                                    is_contiguous(m, p) && address_of(m, p, &pp) && pp == pptr[i])) &&
                    (!hold || hold_object(i, g)) && take(i, g, gp);
    Py_DECREF(g);  // (p still holds it: nothing is freed here)
    return ok;
  };

  // Parameter i read along the layout and through the shim alone: no Python call, no reference
  // count touched but torch's own atomic one of a gradient held, nothing allocated (so a thread
  // without the GIL may run it while the one holding it runs no Python code). Returns how:
  // found (the gradient's address in gptr[i]; held in its slot where `hold`, else its Python
  // object in objects[i]), none (no autograd meta: a leaf, whose .grad is None), or long (read
  // it the long way: no Python object where one is wanted, not plain, a difference, or a
  // non-leaf's warning to give).
  enum How : uint8_t { kLong = 0, kFound = 1, kNone = 2 };
  const Layout& l = m.layout;
  const auto quick_param = [&](Py_ssize_t i, PyObject** objects) -> How {
    PyObject* p = PyList_GET_ITEM(plist, i);
    char* impl = impl_of(m, p);
    if (impl == nullptr) return kLong;
    char* meta = word(impl, l.meta);
    if (meta == nullptr) return kNone;
    char* grad = word(meta, l.grad);
    if (reinterpret_cast<uintptr_t>(grad) == l.undefined) return kLong;  // (the getter warns for a non-leaf)
    void* at = meta + l.grad;  // the gradient's at::Tensor
    // its Python object: none yet (a plain tensor made by autograd; taken only where `hold`), or
    // one of a plain type that holds this very gradient (older torch tags the pointer's low bits)
    auto* g = reinterpret_cast<PyObject*>(word(grad, l.pyobj));
    if (g == nullptr ? !hold : (reinterpret_cast<uintptr_t>(g) & 7) != 0 || impl_of(m, g) != grad) return kLong;
    uint64_t ga = 0;
    uint64_t pa = 0;
    if (!matches_at(m, at, numel[i], dtype[i], &ga) || !shim_matches(m, p, numel[i], dtype[i], &pa) ||
        pa != pptr[i])
      return kLong;  // (the long way finds the difference, or torch's error)
    if (hold ? !held->keep(static_cast<std::size_t>(i), at) : false) return kLong;
    if (!hold) objects[i] = g;
    gptr[i] = ga;
    return kFound;
  };

  // Row i after quick_param said `how`, in row order, the GIL held: false at a difference.
  const auto finish = [&](Py_ssize_t i, How how, PyObject* const* objects) {
    if (how == kLong) return read_param(i);
    if (how == kNone) return true;
    return take(i, hold ? nullptr : objects[i], gptr[i]);
  };

  bool ok = true;
  Py_ssize_t states_done = 0;  // state tensors found as the plan has them, from the first on
  int team = 1;  // threads that read
  bool read = false;  // the parameters read already
#if defined(_OPENMP) && PY_VERSION_HEX >= 0x030A0000
  // Where there are many tensors, a team of up to `threads` reads them (one thread per
  // kItemsPerThread items at most): first the parameters in blocks, each thread taking the next
  // free one, then the state tensors the same way (and thread 1 the identity walk first), the
  // loads of every core in flight at once. No thread calls into Python or touches a Python
  // reference count: parameters are read along the layout through the shim alone (quick_param),
  // and every one it leaves is read afterwards, in order, by this thread alone, the long way.
  // Python's collector is off meanwhile and this thread runs no Python code (the caller checked
  // that no torch function mode is on), so nothing the team reads can change or be freed under it.
  const int want = static_cast<int>(std::min<Py_ssize_t>(threads, (ns + n) / kItemsPerThread));
  if (quick && ns + n >= kParallelItems && want >= 2) {
    const int collecting = PyGC_Disable();
    int helper_same = -1;
    // per row: how it was read, and where not `hold` the gradient's object
    std::vector<uint8_t> scratch(hold ? 0 : static_cast<std::size_t>(n));
    std::vector<PyObject*> objects(hold ? 0 : static_cast<std::size_t>(n), nullptr);
    uint8_t* how = hold ? held->how() : scratch.data();
    std::atomic<Py_ssize_t> next_param{0};
    const auto share_params = [&] {
      for (;;) {
        const Py_ssize_t b = next_param.fetch_add(kParamBlock);
        if (b >= n) return;
        walk_params(m, plist, b, std::min(b + kParamBlock, n), [&](Py_ssize_t i) {
          how[i] = quick_param(i, objects.data());
          return true;
        });
      }
    };
    // the state tensors in blocks, taken in order by whichever thread is free; the first
    // difference found (every tensor before it is checked once the team is done)
    std::atomic<Py_ssize_t> next{0};
    std::atomic<Py_ssize_t> first_bad{ns};
    const auto share_states = [&] {
      for (;;) {
        const Py_ssize_t b = next.fetch_add(kStateBlock);
        if (b >= ns || b >= first_bad.load()) return;
        const Py_ssize_t e = std::min(b + kStateBlock, ns);
        const Py_ssize_t bad = check_states(m, slist, b, e, st, dtypes_of, plain.ptr(), dtype_name.ptr(), true);
        if (bad < e) {
          Py_ssize_t seen = first_bad.load();
          while (bad < seen && !first_bad.compare_exchange_weak(seen, bad)) {
          }
        }
      }
    };
#pragma omp parallel num_threads(want)
    {
      if (omp_get_thread_num() == 0) team = omp_get_num_threads();
      if (omp_get_thread_num() == 1 && want_same) helper_same = state_matches(state.ptr(), snap, n_snap) ? 1 : 0;
      share_params();
      share_states();
    }
    if (collecting != 0) PyGC_Enable();
    read = true;
    out.same = helper_same;
    states_done = std::min(first_bad.load(), next.load());
    // In row order: the gradients found, and the long way for every other parameter (which may
    // run Python code: the gradients found are held first, so none is freed meanwhile).
    for (PyObject* g : objects) Py_XINCREF(g);
    for (Py_ssize_t i = 0; ok && i < n; ++i) ok = finish(i, static_cast<How>(how[i]), objects.data());
    for (PyObject* g : objects) Py_XDECREF(g);
  }
#endif
  if (!read && hold)  // one thread: each parameter the quick way where it can, else the long way
    ok = walk_params(m, plist, 0, n, [&](Py_ssize_t i) { return finish(i, quick_param(i, nullptr), nullptr); });
  else if (!read)
    ok = walk_params(m, plist, 0, n, read_param);
  last_threads = team;
  if (team < 2 && want_same) out.same = state_matches(state.ptr(), snap, n_snap) ? 1 : 0;
  if (ok && checks >= 2 && states_done < ns)
    ok = check_states(m, slist, states_done, ns, st, dtypes_of, plain.ptr(), dtype_name.ptr(), false) == ns;
  if (PyErr_Occurred() != nullptr) PyErr_Clear();  // the long way raises it again, in context
  if (hold && !ok) held->release();
  out.matched = ok;
  return out;
}

}  // namespace fastopt

namespace fastopt {

namespace {

// Calls torch's bump on at::Tensor `at`; torch's error becomes a runtime_error carrying its
// message without the C++ backtrace torch appends.
void bump_one(VersionBump bump, void* at) {
  try {
    bump(at);
  } catch (const std::exception& e) {
    std::string what = e.what();
    const std::size_t cut = what.find("\nException raised from");
    throw std::runtime_error(cut == std::string::npos ? what : what.substr(0, cut));
  } catch (...) {
    throw std::runtime_error("bump_versions: torch's version bump raised");
  }
}

}  // namespace

py::list bump_versions(py::handle tensors, py::handle methods, py::handle plain, uint64_t bump,
                       Py_ssize_t version) {
  if (!PyList_Check(tensors.ptr())) throw py::type_error("bump_versions: tensors must be a list");
  if (bump == 0) throw std::invalid_argument("bump_versions: no bump function");
  if (version < 0 || version >= 128 || version % 8 != 0)
    throw std::invalid_argument("bump_versions: version must be 0 or a multiple of 8 below 128");
  const py::str dtype_name("dtype");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  const Py_ssize_t offset = held_tensor_offset(m);
  const auto fn = reinterpret_cast<VersionBump>(bump);
  PyObject* list = tensors.ptr();
  py::list left;
  // objects three stages ahead, then their TensorImpls' line with the counter's pointer, then
  // the counter (without its offset: the objects two stages ahead, the TensorImpls' first lines
  // one). The counter's pointer is read for the prefetch alone: a wrong offset prefetches
  // another line, and the count itself is torch's.
  constexpr Py_ssize_t d = kBumpStage;
  const Py_ssize_t s = version != 0 ? 1 : 0;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
    if (PyObject* t = item(list, i + (2 + s) * d)) prefetch(t);
    if (PyObject* t = item(list, i + (1 + s) * d))
      if (char* at = tensor_at(m.plain, offset, t)) {
        if (version != 0)
          prefetch(word(at, 0) + version);
        else
          prefetch_lines(word(at, 0), 2);
      }
    if (version != 0)
      if (PyObject* t = item(list, i + d))
        if (char* at = tensor_at(m.plain, offset, t))
          if (char* counter = word(word(at, 0), version)) prefetch_lines(counter, 1);
    PyObject* t = PyList_GET_ITEM(list, i);
    if (char* at = tensor_at(m.plain, offset, t)) {
      bump_one(fn, at);
    } else {
      left.append(t);
    }
  }
  return left;
}

py::tuple resize_like(py::handle targets, py::handle sources, py::handle methods, py::handle plain,
                      py::handle functions, int64_t zero_itemsize) {
  PyObject* tl = targets.ptr();
  PyObject* sl = sources.ptr();
  if (!PyList_Check(tl) || !PyList_Check(sl) || PyList_GET_SIZE(tl) != PyList_GET_SIZE(sl))
    throw py::type_error("resize_like: targets and sources must be lists of one length");
  constexpr int kFunctions = 7;
  if (!PyTuple_Check(functions.ptr()) || PyTuple_GET_SIZE(functions.ptr()) != kFunctions)
    throw py::type_error(
        "resize_like: functions must be (resize_, get_dim, get_sizes, get_strides, get_data_ptr, "
        "get_storage_size, get_storage_offset)");
  if (zero_itemsize < 0) throw std::invalid_argument("resize_like: zero_itemsize must be 0 or more");
  uint64_t fn[kFunctions];
  for (int k = 0; k < kFunctions; ++k) {
    fn[k] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(functions.ptr(), k));
    if (PyErr_Occurred() != nullptr) throw py::error_already_set();
    if (fn[k] == 0) throw std::invalid_argument("resize_like: a shim function is missing");
  }
  const auto resize = reinterpret_cast<int32_t (*)(void*, const int64_t*, int64_t, int32_t*)>(fn[0]);
  const auto get_dim = reinterpret_cast<int32_t (*)(void*, int64_t*)>(fn[1]);
  const auto get_sizes = reinterpret_cast<int32_t (*)(void*, int64_t**)>(fn[2]);
  const auto get_strides = reinterpret_cast<int32_t (*)(void*, int64_t**)>(fn[3]);
  const auto get_data_ptr = reinterpret_cast<int32_t (*)(void*, void**)>(fn[4]);
  const auto get_storage_size = reinterpret_cast<int32_t (*)(void*, int64_t*)>(fn[5]);
  const auto get_storage_offset = reinterpret_cast<int32_t (*)(void*, int64_t*)>(fn[6]);
  // Sets the `numel` elements of at::Tensor t (contiguous, just resized) to +0 in memory, as
  // zero_ would but as no op of torch's: its version counter stays where it is. Only where they
  // fill its storage from its start (false otherwise: the caller's element size is checked, and
  // nothing past the storage is written).
  const auto zero = [&](void* t, int64_t numel) {
    if (zero_itemsize == 0 || numel == 0) return true;
    void* data = nullptr;
    int64_t bytes = 0;
    int64_t start = 0;
    if (get_storage_size(t, &bytes) != 0 || get_storage_offset(t, &start) != 0 || start != 0 ||
        bytes != numel * zero_itemsize || get_data_ptr(t, &data) != 0 || data == nullptr)
      return false;
    std::memset(data, 0, static_cast<std::size_t>(bytes));
    return true;
  };
  const py::str dtype_name("dtype");
  const Methods m = methods_of(methods.ptr(), plain.ptr(), dtype_name.ptr());
  const Py_ssize_t offset = held_tensor_offset(m);
  const Py_ssize_t n = PyList_GET_SIZE(tl);
  py::list restride;
  Py_ssize_t done = 0;
  for (; done < n; ++done) {
    void* t = tensor_at(m.plain, offset, PyList_GET_ITEM(tl, done));
    PyObject* source = PyList_GET_ITEM(sl, done);
    if (t == nullptr) break;
    if (source == Py_None) {  // a 0-dim tensor
      if (resize(t, nullptr, 0, nullptr) != 0 || !zero(t, 1)) break;
      continue;
    }
    void* s = tensor_at(m.plain, offset, source);
    int64_t dim = 0;
    int64_t* sizes = nullptr;
    if (s == nullptr || get_dim(s, &dim) != 0 || get_sizes(s, &sizes) != 0 || resize(t, sizes, dim, nullptr) != 0)
      break;
    int64_t numel = 1;
    for (int64_t d = 0; d < dim; ++d) numel *= sizes[d];
    if (!zero(t, numel)) break;
    int64_t* want = nullptr;
    int64_t* got = nullptr;
    if (get_strides(s, &want) != 0 || get_strides(t, &got) != 0) break;
    if (!std::equal(want, want + dim, got)) restride.append(done);
  }
  return py::make_tuple(done, restride);
}

void bump_held(HeldGrads& held, uint64_t bump) {
  if (bump == 0) throw std::invalid_argument("bump_held: no bump function");
  const auto fn = reinterpret_cast<VersionBump>(bump);
  for (std::size_t i = 0; i < held.count; ++i) bump_one(fn, held.slot(i));
}

}  // namespace fastopt
