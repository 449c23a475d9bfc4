// fastopt._C: the native core. Bindings only; the logic lives in the other files.
#include <cmath>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "dtype.h"
#include "gather.h"
#include "identity.h"
#include "matcher.h"
#include "rules.h"
#include "step_cpu.h"

namespace py = pybind11;
using namespace pybind11::literals;
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

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

// The thread count a kernel call takes from Python: 0 (OpenMP's default) or more.
int check_threads(int num_threads) {
  if (num_threads < 0)
    throw std::invalid_argument("num_threads must be 0 (OpenMP's default) or positive, got " +
                                std::to_string(num_threads));
  return num_threads;
}

// Checks the shapes of one multi-tensor call and returns the tensor count.
int64_t check_step_args(const Array<uint64_t>& ptrs, int64_t n_ptrs, const Array<int64_t>& numels,
                        const Array<int32_t>& dtypes, const Array<int32_t>& flags, const Array<double>& hyper,
                        int64_t n_hyper) {
  const int64_t n = numels.ndim() == 1 ? static_cast<int64_t>(numels.shape(0)) : -1;
  const auto rows_ok = [n](const py::array& a, int64_t cols) {
    return a.ndim() == 2 && a.shape(0) == n && a.shape(1) == cols;
  };
  if (n < 0 || !rows_ok(ptrs, n_ptrs) || !rows_ok(hyper, n_hyper) || dtypes.ndim() != 1 ||
      dtypes.shape(0) != n || flags.ndim() != 1 || flags.shape(0) != n)
    throw std::invalid_argument("step: expected ptrs (n, " + std::to_string(n_ptrs) + "), numels (n,), dtypes (n,), "
                                "flags (n,), hyper (n, " + std::to_string(n_hyper) + ")");
  return n;
}

void adam_step(const Array<uint64_t>& ptrs, const Array<int64_t>& numels, const Array<int32_t>& dtypes,
               const Array<int32_t>& flags, const Array<double>& hyper, double grad_scale, double grad_mult,
               int num_threads) {
  const int64_t n = check_step_args(ptrs, fastopt::kAdamPtrs, numels, dtypes, flags, hyper, fastopt::kAdamHypers);
  const int threads = check_threads(num_threads);
  py::gil_scoped_release release;
  fastopt::adam_step_cpu(n, ptrs.data(), numels.data(), dtypes.data(), flags.data(), hyper.data(), grad_scale,
                         grad_mult, threads);
}

void sgd_step(const Array<uint64_t>& ptrs, const Array<int64_t>& numels, const Array<int32_t>& dtypes,
              const Array<int32_t>& flags, const Array<double>& hyper, double grad_scale, double grad_mult,
              int num_threads) {
  const int64_t n = check_step_args(ptrs, fastopt::kSgdPtrs, numels, dtypes, flags, hyper, fastopt::kSgdHypers);
  const int threads = check_threads(num_threads);
  py::gil_scoped_release release;
  fastopt::sgd_step_cpu(n, ptrs.data(), numels.data(), dtypes.data(), flags.data(), hyper.data(), grad_scale,
                        grad_mult, threads);
}

py::tuple grad_norm(const Array<uint64_t>& ptrs, const Array<int64_t>& numels, const Array<int32_t>& dtypes,
                    double norm_type, int num_threads) {
  const int64_t n = numels.ndim() == 1 ? static_cast<int64_t>(numels.shape(0)) : -1;
  if (n < 0 || ptrs.ndim() != 1 || ptrs.shape(0) != n || dtypes.ndim() != 1 || dtypes.shape(0) != n)
    throw std::invalid_argument("grad_norm: expected ptrs (n,), numels (n,), dtypes (n,)");
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  if (!inf && norm_type != 2.0)
    throw std::invalid_argument("grad_norm: norm_type must be 2 or inf, got " + std::to_string(norm_type));
  const int threads = check_threads(num_threads);
  fastopt::GradNorm out{};
  {
    py::gil_scoped_release release;
    out = fastopt::grad_norm_cpu(n, ptrs.data(), numels.data(), dtypes.data(), inf, threads);
  }
  return py::make_tuple(out.norm, out.nonfinite);
}

// gather_rows with its outputs made here: (matched, grads, grad_ptrs, rows, same), grads the
// gradients' objects or `held` (which holds them), grad_ptrs and rows one per gradient found
// (rows None when every parameter has one), same None unless asked (state given).
py::tuple gather_rows(py::handle params, const py::array_t<int64_t>& numels, const py::array_t<int32_t>& dtypes,
                      py::handle dtype_objects, const py::array_t<uint64_t>& param_ptrs, py::handle state_tensors,
                      const py::array_t<uint64_t>& state_ptrs, const py::array_t<int64_t>& state_numels,
                      const py::array_t<int32_t>& state_dtypes, py::handle methods, py::handle plain, int checks,
                      py::handle state, const py::array_t<uint64_t>& snapshot, bool parallel, int threads,
                      py::handle held,
                      py::handle buffers) {
  const py::ssize_t n = numels.ndim() == 1 ? numels.shape(0) : 0;
  const bool given = !buffers.is_none();
  if (given && (!PyTuple_Check(buffers.ptr()) || PyTuple_GET_SIZE(buffers.ptr()) != 2 ||
                !py::array_t<uint64_t, py::array::c_style>::check_(buffers[py::int_(0)]) ||
                !py::array_t<int64_t, py::array::c_style>::check_(buffers[py::int_(1)])))
    throw py::type_error("gather_rows: buffers must be (uint64 array, int64 array), C-contiguous, or None");
  py::array_t<uint64_t> grad_ptrs = given ? buffers[py::int_(0)].cast<py::array_t<uint64_t>>() : py::array_t<uint64_t>(n);
  py::array_t<int64_t> rows = given ? buffers[py::int_(1)].cast<py::array_t<int64_t>>() : py::array_t<int64_t>(n);
  fastopt::Gathered out = fastopt::gather_rows(params, numels, dtypes, dtype_objects, param_ptrs, grad_ptrs, rows,
                                               state_tensors, state_ptrs, state_numels, state_dtypes, methods,
                                               plain, checks, state, snapshot, parallel, threads, held);
  const py::object same = out.same < 0 ? py::object(py::none()) : py::object(py::bool_(out.same == 1));
  if (!out.matched) return py::make_tuple(false, py::none(), py::none(), py::none(), same);
  const auto found = out.held ? static_cast<py::ssize_t>(py::cast<fastopt::HeldGrads*>(held)->count)
                              : static_cast<py::ssize_t>(PyList_GET_SIZE(out.grads.ptr()));
  const py::object grads = out.held ? py::reinterpret_borrow<py::object>(held) : py::object(out.grads);
  if (found == n) return py::make_tuple(true, grads, grad_ptrs, py::none(), same);
  if (given) {  // (views of the caller's buffers)
    const py::slice first(0, found, 1);
    return py::make_tuple(true, grads, grad_ptrs[first], rows[first], same);
  }
  grad_ptrs.resize({found});
  rows.resize({found});
  return py::make_tuple(true, grads, grad_ptrs, rows, same);
}

// Column names of a pointer or hyperparameter table, in column order.
py::tuple columns(std::initializer_list<std::pair<int, const char*>> named, int count) {
  py::tuple out(static_cast<std::size_t>(count));
  for (const auto& [col, name] : named) out[static_cast<std::size_t>(col)] = py::str(name);
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "fastopt native core: custom-key matching and paramwise rule assignment (match, assign), "
      "the multi-tensor CPU steps (adam_step, sgd_step; cpu_isa, set_cpu_isa), the global gradient "
      "norm (grad_norm), the thread count of the last of those calls (last_num_threads), and the numbers "
      "Python passes to them (DTYPE_CODES, STEP_FLAGS, *_COLUMNS, *_HYPERS, PARAM_FLAGS, CONFIG_FLAGS).";
  m.def("match", &match, py::arg("names"), py::arg("keys"),
        "Index of the custom key the reference picks for each name (longest, then "
        "alphabetical substring match), -1 where none matches.");
  m.def("assign", &assign, py::arg("names"), py::arg("flags"), py::arg("keys"), py::arg("config"),
        "Rule outcome per parameter: (ids, table), ids[i] indexing rows (key, lr_rule, "
        "wd_rule, kind) of table, rows in first-seen order.");
  m.def("adam_step", &adam_step, py::arg("ptrs"), py::arg("numels"), py::arg("dtypes"), py::arg("flags"),
        py::arg("hyper"), py::arg("grad_scale"), py::arg("grad_mult") = 1.0, py::arg("num_threads") = 0,
        "One Adam/AdamW step over n tensors: ptrs (n, 6) param/grad/exp_avg/exp_avg_sq/max_exp_avg_sq/step, "
        "hyper (n, 5) lr/beta1/beta2/eps/weight_decay; grad_scale <= 0 means none; grad_mult "
        "multiplies every (unscaled) gradient as it is read. Runs on num_threads threads (0: OpenMP's "
        "default; fastopt passes torch.get_num_threads()), at most one per 32K-element chunk; the same "
        "bits for any count.");
  m.def("sgd_step", &sgd_step, py::arg("ptrs"), py::arg("numels"), py::arg("dtypes"), py::arg("flags"),
        py::arg("hyper"), py::arg("grad_scale"), py::arg("grad_mult") = 1.0, py::arg("num_threads") = 0,
        "One SGD step over n tensors: ptrs (n, 3) param/grad/momentum_buffer, hyper (n, 4) "
        "lr/momentum/dampening/weight_decay; grad_scale <= 0 means none; grad_mult multiplies "
        "every (unscaled) gradient as it is read. Runs on num_threads threads (0: OpenMP's default; "
        "fastopt passes torch.get_num_threads()), at most one per 32K-element chunk; the same bits for "
        "any count.");
  m.def("grad_norm", &grad_norm, py::arg("ptrs"), py::arg("numels"), py::arg("dtypes"), py::arg("norm_type"),
        py::arg("num_threads") = 0,
        "(norm, nonfinite): the 2-norm or inf-norm of n gradients taken together, float block sums added in "
        "double in a fixed order (the same for any thread count), and whether any is inf/NaN. Runs on "
        "num_threads threads (0: OpenMP's default; fastopt passes torch.get_num_threads()), at most one "
        "per 32K-element chunk.");
  m.def("last_num_threads", &fastopt::last_num_threads,
        "Threads the parallel loop of this thread's last adam_step, sgd_step or grad_norm call ran on "
        "(0 before the first; 1 without OpenMP).");
  m.def("state_addresses", &fastopt::state_addresses, py::arg("state"),
        "Addresses of the objects of a dict of dicts (an optimizer's state), in iteration order: per\n"
        "entry its key, its value and, for a dict value, its size and each of its keys and values.");
  m.def("state_unchanged", &fastopt::state_unchanged, py::arg("state"), py::arg("snapshot"),
        "Whether state_addresses(state) equals snapshot (whose objects the caller keeps alive).");
  m.def("list_addresses", &fastopt::list_addresses, py::arg("lists"),
        "The length of every list of a list of lists and the address of each item, in order.");
  m.def("lists_unchanged", &fastopt::lists_unchanged, py::arg("lists"), py::arg("snapshot"),
        "Whether list_addresses(lists) equals snapshot (whose items the caller keeps alive).");
  m.def("read_address", &fastopt::read_address, py::arg("reader"), py::arg("tensor"),
        "An address reader (gather_rows' methods[3]) applied to one tensor, to check it against\n"
        "Tensor.data_ptr: the address, or RuntimeError when the reader raised.");
  m.def("shim_read", &fastopt::shim_read, py::arg("methods"), py::arg("plain"), py::arg("tensor"),
        "What gather_rows' shim (methods[7]) reads of one tensor: (is_contiguous, numel, scalar type, address),\n"
        "or None where it does not read it; to check it against Tensor's methods.");
  py::class_<fastopt::HeldGrads>(m, "HeldGrads",
                                  "A plan's gradient holder: slots in which gather_rows holds the gradients it "
                                  "read (len: how many) until release().")
      .def("__len__", [](const fastopt::HeldGrads& h) { return h.count; })
      .def("release", &fastopt::HeldGrads::release, "Let go of every gradient held.")
      .def_property_readonly(
          "busy", [](const fastopt::HeldGrads& h) { return h.busy; },
          "Whether a pass holds gradients here that have not been released.");
  m.def("held_grads", &fastopt::held_grads, py::arg("methods"), py::arg("plain"), py::arg("rows"),
        "A HeldGrads of `rows` slots for gather_rows' methods, or None where they cannot hold tensors.");
  m.def("hold_read", &fastopt::hold_read, py::arg("methods"), py::arg("plain"), py::arg("tensor"), py::arg("during"),
        "Holds a plain tensor in a HeldGrads slot (methods' shim and layout) and reads its address through it:\n"
        "(during() called meanwhile, the address), or None where it cannot; to check the slots against torch.");
  m.def("layout_read", &fastopt::layout_read, py::arg("methods"), py::arg("plain"), py::arg("tensor"),
        "What gather_rows' layout (methods[8]) reads of one tensor: the addresses of its TensorImpl, storage,\n"
        "autograd meta, gradient TensorImpl and Python object, or None; to check the layout against torch.");
  m.def("bump_versions", &fastopt::bump_versions, py::arg("tensors"), py::arg("methods"), py::arg("plain"),
        py::arg("bump"), py::arg("version") = 0,
        "Counts one in-place change in each tensor's version counter through torch's bump (its address),\n"
        "prefetching the counters along `version` (0: unknown); returns the tensors it cannot reach,\n"
        "for torch's own increment_version.");
  m.def("bump_held", &fastopt::bump_held, py::arg("held"), py::arg("bump"),
        "bump_versions for the gradients a HeldGrads holds.");
  m.def("resize_like", &fastopt::resize_like, py::arg("targets"), py::arg("sources"), py::arg("methods"),
        py::arg("plain"), py::arg("functions"), py::arg("zero_itemsize") = 0,
        "Resizes tensors in place to their sources' sizes (None: 0-dim) through torch's C shim, their\n"
        "elements (of zero_itemsize bytes; 0: left) then set to +0: (how many, from the first on; the\n"
        "indices among them whose strides differ from their source's).");
  m.def("norm_table", &fastopt::norm_table, py::arg("tensors"), py::arg("codes"), py::arg("methods"),
        py::arg("plain"), py::arg("strided"), py::arg("getters"), py::arg("ptrs"), py::arg("numels"),
        py::arg("dtypes"),
        "One pass over a list of gradients for the native norm: True with ptrs, numels and dtypes\n"
        "filled when every one is a plain contiguous strided CPU tensor of a kernel dtype, else False.");
  m.def("gather_rows", &gather_rows, py::arg("params"), py::arg("numels"), py::arg("dtypes"),
        py::arg("dtype_objects"), py::arg("param_ptrs"), py::arg("state_tensors"), py::arg("state_ptrs"),
        py::arg("state_numels"), py::arg("state_dtypes"), py::arg("methods"), py::arg("plain"), py::arg("checks") = 2,
        py::arg("state") = py::none(), py::arg("snapshot") = py::array_t<uint64_t>(0), py::arg("parallel") = false,
        py::arg("threads") = 2, py::arg("held") = py::none(), py::arg("buffers") = py::none(),
        "One pass over a plan's parameters: (True, grads, grad_ptrs, rows, same) when every parameter with\n"
        "a gradient, its gradient and every state tensor match the plan (sizes, dtypes, contiguity,\n"
        "addresses): the gradients that are not None, their addresses and their rows (None: every row);\n"
        "(False, None, None, None, same) at the first difference. same: whether the state dict `state`\n"
        "holds the objects of `snapshot` (state_unchanged), None without a state. checks=1 leaves the\n"
        "state tensors unread, checks=0 the parameters too (to price the checks; fastopt steps with 2).\n"
        "parallel: no torch function mode is on (other threads, up to `threads` in all, may read alongside;\n"
        "a gradient may be read without its getter). held: a HeldGrads (held_grads) in which gradients are held instead of\n"
        "by their objects where they can be; grads is then that HeldGrads. buffers: (grad_ptrs, rows) arrays\n"
        "of one entry per parameter to fill (what is returned are views of them), else new ones.");
  m.def("last_gather_threads", &fastopt::last_gather_threads,
        "Threads this thread's last gather_rows pass ran on (1: the calling thread alone; 0 before the first).");
  m.def("cpu_isa", &fastopt::cpu_isa, "Instruction set of the step kernels in use (avx512, avx2, baseline).");
  m.def("set_cpu_isa", &fastopt::set_cpu_isa, py::arg("name"),
        "Use another built-in kernel build (baseline, avx2, avx512) if this CPU supports it. Safe while "
        "other threads step: each call runs wholly on the build it finds when it starts.");
  // The interface numbers, exported once: Python reads them by name (fastopt/_kernels.py,
  // fastopt/_rules.py) and fastopt/_C.pyi lists them.
  using namespace fastopt;
  m.attr("DTYPE_CODES") = py::dict("float32"_a = int{kFloat32}, "float64"_a = int{kFloat64},
                                   "bfloat16"_a = int{kBFloat16}, "float16"_a = int{kFloat16});
  m.attr("STEP_FLAGS") = py::dict("maximize"_a = int{kMaximize}, "amsgrad"_a = int{kAmsgrad},
                                  "decoupled_weight_decay"_a = int{kDecoupledWd}, "nesterov"_a = int{kNesterov},
                                  "first_step"_a = int{kFirstStep});
  m.attr("ADAM_COLUMNS") = columns({{kAdamParam, "param"}, {kAdamGrad, "grad"}, {kAdamExpAvg, "exp_avg"},
                                    {kAdamExpAvgSq, "exp_avg_sq"}, {kAdamMaxExpAvgSq, "max_exp_avg_sq"},
                                    {kAdamStep, "step"}}, kAdamPtrs);
  m.attr("ADAM_HYPERS") = columns({{kAdamLr, "lr"}, {kAdamBeta1, "beta1"}, {kAdamBeta2, "beta2"},
                                   {kAdamEps, "eps"}, {kAdamWd, "weight_decay"}}, kAdamHypers);
  m.attr("SGD_COLUMNS") = columns({{kSgdParam, "param"}, {kSgdGrad, "grad"}, {kSgdBuf, "momentum_buffer"}}, kSgdPtrs);
  m.attr("SGD_HYPERS") = columns({{kSgdLr, "lr"}, {kSgdMomentum, "momentum"}, {kSgdDampening, "dampening"},
                                  {kSgdWd, "weight_decay"}}, kSgdHypers);
  m.attr("PARAM_FLAGS") = py::dict("is_bias"_a = int{kIsBias}, "is_norm"_a = int{kIsNorm},
                                   "is_dwconv"_a = int{kIsDwconv}, "is_conv2d"_a = int{kIsConv2d},
                                   "in_dcn"_a = int{kInDcn}, "conv_offset"_a = int{kConvOffset},
                                   "is_flat"_a = int{kIsFlat}, "frozen"_a = int{kFrozen},
                                   "duplicate"_a = int{kDuplicate});
  m.attr("CONFIG_FLAGS") = py::dict("mmengine"_a = int{kMmengine}, "has_wd"_a = int{kHasWd},
                                    "bypass_dup"_a = int{kBypassDup}, "bias_lr"_a = int{kBiasLr},
                                    "bias_decay"_a = int{kBiasDecay}, "norm_decay"_a = int{kNormDecay},
                                    "dwconv_decay"_a = int{kDwconvDecay}, "flat_decay"_a = int{kFlatDecay},
                                    "dcn_lr"_a = int{kDcnLr}, "keep_frozen"_a = int{kKeepFrozen});
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
