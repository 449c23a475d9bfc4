"""Typed stub of ``fastopt._C``, the native core (csrc/bindings.cpp)."""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

def match(names: list[str], keys: list[str]) -> npt.NDArray[np.int32]:
    """Index of the custom key the reference picks for each name (longest, then alphabetical
    substring match), -1 where none matches."""

def assign(names: list[str], flags: npt.ArrayLike, keys: list[str],
           config: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Rule outcome per parameter: (ids, table), ids[i] indexing rows (key, lr_rule, wd_rule,
    kind) of table, rows in first-seen order."""

def adam_step(ptrs: npt.ArrayLike, numels: npt.ArrayLike, dtypes: npt.ArrayLike, flags: npt.ArrayLike,
              hyper: npt.ArrayLike, grad_scale: float, grad_mult: float = 1.0, num_threads: int = 0) -> None:
    """One Adam/AdamW step over n tensors: ptrs (n, len(ADAM_COLUMNS)), hyper
    (n, len(ADAM_HYPERS)); grad_scale <= 0 means none; grad_mult multiplies every (unscaled)
    gradient as it is read. Runs on num_threads threads (0: OpenMP's default; fastopt passes
    torch.get_num_threads()), at most one per 32K-element chunk; the same bits for any count."""

def sgd_step(ptrs: npt.ArrayLike, numels: npt.ArrayLike, dtypes: npt.ArrayLike, flags: npt.ArrayLike,
             hyper: npt.ArrayLike, grad_scale: float, grad_mult: float = 1.0, num_threads: int = 0) -> None:
    """One SGD step over n tensors: ptrs (n, len(SGD_COLUMNS)), hyper (n, len(SGD_HYPERS));
    grad_scale <= 0 means none; grad_mult multiplies every (unscaled) gradient as it is read.
    Runs on num_threads threads (0: OpenMP's default; fastopt passes torch.get_num_threads()),
    at most one per 32K-element chunk; the same bits for any count."""

def grad_norm(ptrs: npt.ArrayLike, numels: npt.ArrayLike, dtypes: npt.ArrayLike,
              norm_type: float, num_threads: int = 0) -> tuple[float, bool]:
    """(norm, nonfinite): the 2-norm (norm_type 2) or inf-norm of n gradients taken together,
    float block sums added in double in a fixed order (the same for any thread count), and
    whether any is inf/NaN. Runs on num_threads threads (0: OpenMP's default; fastopt passes
    torch.get_num_threads()), at most one per 32K-element chunk."""

def last_num_threads() -> int:
    """Threads the parallel loop of this thread's last adam_step, sgd_step or grad_norm call ran
    on (0 before the first; 1 without OpenMP)."""

def state_addresses(state: dict) -> npt.NDArray[np.uint64]:
    """Addresses of the objects of a dict of dicts (an optimizer's state), in iteration order: per
    entry its key, its value and, for a dict value, its size and each of its keys and values."""

def state_unchanged(state: dict, snapshot: npt.ArrayLike) -> bool:
    """Whether state_addresses(state) equals snapshot (whose objects the caller keeps alive)."""

def list_addresses(lists: list[list]) -> npt.NDArray[np.uint64]:
    """The length of every list of a list of lists and the address of each item, in order."""

def lists_unchanged(lists: list[list], snapshot: npt.ArrayLike) -> bool:
    """Whether list_addresses(lists) equals snapshot (whose items the caller keeps alive)."""

def layout_read(methods: tuple, plain: tuple, tensor: object) -> tuple[int, int, int, int, int] | None:
    """What gather_rows' layout (methods[8]) reads of one tensor: the addresses of its TensorImpl, storage,
    autograd meta, gradient TensorImpl and Python object, or None; to check the layout against torch."""

def shim_read(methods: tuple, plain: tuple, tensor: object) -> tuple[bool, int, int, int] | None:
    """What gather_rows' shim (methods[7]) reads of one tensor: (is_contiguous, numel, scalar type, address),
    or None where it does not read it; to check it against Tensor's methods."""

def gather_rows(params: list, numels: npt.ArrayLike, dtypes: npt.ArrayLike, dtype_objects: tuple,
                param_ptrs: npt.ArrayLike, state_tensors: list, state_ptrs: npt.ArrayLike,
                state_numels: npt.ArrayLike, state_dtypes: npt.ArrayLike, methods: tuple, plain: tuple,
                checks: int = 2, state: dict | None = None, snapshot: npt.ArrayLike = ...,
                parallel: bool = False, threads: int = 2, held: HeldGrads | None = None,
                buffers: tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]] | None = None,
                ) -> tuple[bool, list | HeldGrads | None, npt.NDArray[np.uint64] | None,
                           npt.NDArray[np.int64] | None, bool | None]:
    """One pass over a plan's parameters: (True, grads, grad_ptrs, rows, same) when every parameter
    with a gradient, its gradient and every state tensor match the plan (sizes, dtypes,
    contiguity, addresses): the gradients that are not None, their addresses and rows (None:
    every row); (False, None, None, None, same) at the first difference. same: whether ``state``
    holds the objects of ``snapshot`` (state_unchanged), None without a state. checks=1 leaves
    the state tensors unread, checks=0 the parameters too (to price the checks; fastopt steps
    with 2). parallel: no torch function mode is on (other threads, up to ``threads`` in all,
    may read alongside; a gradient may be read without its getter). held: a HeldGrads
    (held_grads) in which gradients are held instead of by their objects where they can be;
    grads is then that HeldGrads. buffers: (grad_ptrs, rows) arrays of one entry per parameter
    to fill (views of them are returned)."""

class HeldGrads:
    """A plan's gradient holder: slots in which gather_rows holds the gradients it read (len:
    how many) until release()."""

    busy: bool  # (read-only) whether a pass holds gradients here that have not been released
    def __len__(self) -> int: ...
    def release(self) -> None:
        """Let go of every gradient held."""

def held_grads(methods: tuple, plain: tuple, rows: int) -> HeldGrads | None:
    """A HeldGrads of ``rows`` slots for gather_rows' methods, or None where they cannot hold tensors."""

def hold_read(methods: tuple, plain: tuple, tensor: object,
              during: Callable[[], object]) -> tuple[object, int] | None:
    """Holds a plain tensor in a HeldGrads slot and reads its address through it: (during() called
    meanwhile, the address), or None where it cannot; to check the slots against torch."""

def last_gather_threads() -> int:
    """Threads this thread's last gather_rows pass ran on (1: the calling thread alone; 0 before
    the first)."""

def norm_table(tensors: list, codes: dict, methods: tuple, plain: tuple, strided: object,
               getters: tuple, ptrs: npt.NDArray[np.uint64], numels: npt.NDArray[np.int64],
               dtypes: npt.NDArray[np.int32]) -> bool:
    """Each tensor's address, numel and dtype code into the arrays, in one pass: False at the first
    that is not a plain contiguous CPU tensor of a kernel dtype."""

def bump_versions(tensors: list, methods: tuple, plain: tuple, bump: int, version: int = 0) -> list:
    """Counts one in-place change in each tensor's version counter through torch's bump_version;
    returns the ones it does not reach, for torch's increment_version."""

def bump_held(held: HeldGrads, bump: int) -> None:
    """bump_versions for the gradients a HeldGrads holds."""

def resize_like(targets: list, sources: list, methods: tuple, plain: tuple, functions: tuple,
                zero_itemsize: int = 0) -> tuple[int, list[int]]:
    """Resizes each target to its source's sizes (None: 0-dim) through torch's C shim, then sets its
    elements (of ``zero_itemsize`` bytes; 0: left) to +0: (how many, from the first on; those whose
    strides differ from their source's)."""

def cpu_isa() -> str:
    """Instruction set of the step kernels in use (avx512, avx2, baseline)."""

def set_cpu_isa(name: str) -> None:
    """Use another built-in kernel build (baseline, avx2, avx512) if this CPU supports it. Safe while
    other threads step: each call runs wholly on the build it finds when it starts."""

#: storage dtype name ("float32", "float64", "bfloat16", "float16") -> the kernels' code
DTYPE_CODES: dict[str, int]
#: per-tensor flag name (maximize, amsgrad, decoupled_weight_decay, nesterov, first_step) -> bit
STEP_FLAGS: dict[str, int]
#: pointer-table column names, in column order
ADAM_COLUMNS: tuple[str, ...]
SGD_COLUMNS: tuple[str, ...]
#: hyperparameter column names, in column order
ADAM_HYPERS: tuple[str, ...]
SGD_HYPERS: tuple[str, ...]
#: parameter facts and config facts of the rules (csrc/rules.h), name -> bit
PARAM_FLAGS: dict[str, int]
CONFIG_FLAGS: dict[str, int]
#: whether the kernels were built with OpenMP
openmp: bool
