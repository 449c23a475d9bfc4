"""The native boundary of the step kernels: thread count and kernel-build switching.

Every multi-thread entry point of ``_C`` (``adam_step``, ``sgd_step``, ``grad_norm``) runs on as
many threads as ``torch.get_num_threads()`` says when the call is made (``_C.last_num_threads``
reports what the last call on this thread used), gives the same bits for any thread count, and
``set_cpu_isa`` may switch kernel builds while another thread steps.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from fastopt import clip_grad
from fastopt import optim as fo

from .test_optim import _isas

_C = pytest.importorskip("fastopt._C")
pytestmark = pytest.mark.skipif(not _C.openmp, reason="the native core was built without OpenMP")

#: more than three 32K-element chunks in all, odd sizes, an empty tensor
SIZES = [70_001, 33, 0, 40_000, 5]
CLASSES = {"SGD": (fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)),
           "Adam": (fo.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
           "AdamW": (fo.AdamW, dict(lr=1e-2, weight_decay=0.1))}


@pytest.fixture
def torch_threads() -> Iterator[Callable[[int], None]]:
    """``set(n)`` sets torch's thread count; the count from before the test is restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.nn.Parameter]:
    """Random parameters of the sizes ``SIZES``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)) for n in SIZES]


def _set_grads(ps: list[torch.nn.Parameter], seed: int) -> None:
    """Random gradients, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def _steps(name: str, threads: int, dtype: torch.dtype = torch.float32, steps: int = 3,
           flat: bool = False) -> tuple[list[torch.Tensor], list[int]]:
    """Parameters and every state tensor after ``steps`` steps on ``threads`` torch threads, and
    the thread count each step's kernel ran on."""
    cls, opts = CLASSES[name]
    ps = _params(dtype)
    opt = cls(ps, **opts)
    if flat:
        opt.use_flat_buffers()
    used = []
    torch.set_num_threads(threads)
    for step in range(steps):
        _set_grads(ps, seed=step + 1)
        opt.step()
        assert opt.fastopt_tier == ("flat" if flat else "native")
        used.append(_C.last_num_threads())
    out = [p.detach().clone() for p in ps]
    out += [v.clone() for p in ps for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
    return out, used


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(CLASSES))
def test_step_runs_on_torchs_thread_count(name: str, threads: int, torch_threads: Any) -> None:
    """The native step's kernel runs on ``torch.get_num_threads()`` threads."""
    _, used = _steps(name, threads)
    assert used == [threads] * len(used)


@pytest.mark.parametrize("threads", [1, 2])
def test_flat_step_runs_on_torchs_thread_count(threads: int, torch_threads: Any) -> None:
    """So does the flat-buffer step's."""
    _, used = _steps("AdamW", threads, flat=True)
    assert used == [threads] * len(used)


@pytest.mark.parametrize("threads", [1, 2])
def test_clip_norm_runs_on_torchs_thread_count(threads: int, torch_threads: Any) -> None:
    """So does the native norm pass of clipping."""
    ps = _params()
    _set_grads(ps, seed=1)
    torch_threads(threads)
    _, nonfinite = clip_grad.total_norm([p.grad for p in ps])
    assert nonfinite is False  # (False, not None: the native pass took it)
    assert _C.last_num_threads() == threads


def test_step_in_another_thread_follows_torchs_setting(torch_threads: Any) -> None:
    """A step on a thread that has run no parallel torch op yet: OpenMP's default there is
    every core (OMP_NUM_THREADS aside), torch's setting is what the kernels must follow."""
    want = 1 if (os.cpu_count() or 1) > 1 else 2  # not OpenMP's default
    torch_threads(want)
    cls, opts = CLASSES["AdamW"]
    ps = _params()
    opt = cls(ps, **opts)
    _set_grads(ps, seed=1)
    opt.step()  # the state exists: the thread's step below creates no tensor
    seen: list[Any] = []

    def train() -> None:
        try:
            opt.step()
            step_threads = _C.last_num_threads()
            _, nonfinite = clip_grad.total_norm([p.grad for p in ps])
            seen.extend([step_threads, _C.last_num_threads(), nonfinite])
        except BaseException as e:  # reported by the main thread
            seen.append(e)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join()
    assert seen == [want, want, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CLASSES))
def test_thread_count_does_not_change_a_bit(name: str, dtype: torch.dtype, torch_threads: Any) -> None:
    """Parameters and state after three steps: the same bits on 1, 2 and 3 threads."""
    one, used_one = _steps(name, 1, dtype)
    for threads in (2, 3):
        other, used = _steps(name, threads, dtype)
        assert used_one == [1] * 3 and used == [threads] * 3
        for a, b in zip(one, other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_norm_is_the_same_for_any_thread_count(dtype: torch.dtype, norm_type: float,
                                               torch_threads: Any) -> None:
    """The native norm in double (before it is rounded to the gradients' dtype) and the norm
    ``total_norm`` returns: the same bits on 1, 2, 3 and 5 threads."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(n, generator=gen).to(dtype) for n in (300_001, 32_769, 7, 1_000)]
    table = clip_grad.native_norm_table(grads, norm_type)
    assert table is not None
    raw, norms = [], []
    for threads in (1, 2, 3, 5):
        raw.append(_C.grad_norm(*table, norm_type, num_threads=threads)[0])
        assert _C.last_num_threads() == threads
        torch_threads(threads)
        norms.append(clip_grad.total_norm(grads, norm_type)[0])
        assert _C.last_num_threads() == threads
    assert raw == [raw[0]] * len(raw)
    assert all(torch.equal(norms[0], n) for n in norms[1:])


def _norm_table(ts: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_C.grad_norm``'s table of fp32 tensors."""
    return (np.array([t.data_ptr() for t in ts], dtype=np.uint64),
            np.array([t.numel() for t in ts], dtype=np.int64), np.zeros(len(ts), dtype=np.int32))


def test_thread_argument_of_the_kernels() -> None:
    """``num_threads``: honoured, at most one thread per 32K-element chunk, 0 or omitted for
    OpenMP's default, negative refused; ``last_num_threads`` is per calling thread."""
    table = _norm_table([torch.ones(3 * 32_768)])  # three chunks
    for threads in (1, 2, 3):
        _C.grad_norm(*table, 2.0, num_threads=threads)
        assert _C.last_num_threads() == threads
    _C.grad_norm(*table, 2.0, num_threads=8)
    assert _C.last_num_threads() == 3
    _C.grad_norm(*_norm_table([torch.ones(100)]), 2.0, num_threads=2)
    assert _C.last_num_threads() == 1  # one chunk: one thread
    _C.grad_norm(*table, 2.0)
    assert 1 <= _C.last_num_threads() <= 3
    with pytest.raises(ValueError, match="num_threads"):
        _C.grad_norm(*table, 2.0, num_threads=-1)
    ptrs = np.zeros((1, len(_C.SGD_COLUMNS)), np.uint64)
    with pytest.raises(ValueError, match="num_threads"):
        _C.sgd_step(ptrs, np.zeros(1, np.int64), np.zeros(1, np.int32), np.zeros(1, np.int32),
                    np.zeros((1, len(_C.SGD_HYPERS))), 0.0, 1.0, num_threads=-2)
    _C.grad_norm(*table, 2.0, num_threads=2)
    fresh: list[int] = []
    worker = threading.Thread(target=lambda: fresh.append(_C.last_num_threads()))
    worker.start()
    worker.join()
    assert fresh == [0] and _C.last_num_threads() == 2


# ------------------------------------------------------------------ switching kernel builds


class _AdamCall:
    """One Adam step over fixed buffers through ``_C.adam_step`` (every call starts from the same
    values), and the global norm of its gradients through ``_C.grad_norm``."""

    def __init__(self, n: int = 400_000) -> None:
        gen = torch.Generator().manual_seed(5)
        self.p0 = torch.randn(n, generator=gen)
        self.p, self.g = self.p0.clone(), torch.randn(n, generator=gen)
        self.m, self.v, self.vmax = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        self.step_t = torch.zeros(())
        cols = {"param": self.p, "grad": self.g, "exp_avg": self.m, "exp_avg_sq": self.v,
                "max_exp_avg_sq": self.vmax, "step": self.step_t}
        self.ptrs = np.array([[cols[c].data_ptr() for c in _C.ADAM_COLUMNS]], dtype=np.uint64)
        row = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
        self.hyper = np.array([[row[h] for h in _C.ADAM_HYPERS]])
        self.flags = np.array([_C.STEP_FLAGS["amsgrad"] | _C.STEP_FLAGS["decoupled_weight_decay"]], np.int32)
        self.numels, self.dtypes = np.array([n], np.int64), np.zeros(1, np.int32)
        self.norm_table = _norm_table([self.g])

    def __call__(self) -> tuple[list[torch.Tensor], float]:
        """Parameters and moments after one step from the start, and the gradients' norm."""
        self.p.copy_(self.p0)
        for t in (self.m, self.v, self.vmax, self.step_t):
            t.zero_()
        _C.adam_step(self.ptrs, self.numels, self.dtypes, self.flags, self.hyper, 0.0, 0.5, num_threads=2)
        norm, _ = _C.grad_norm(*self.norm_table, 2.0, num_threads=2)
        return [self.p.clone(), self.m.clone(), self.v.clone(), self.vmax.clone()], norm


def test_switching_isa_while_another_thread_steps() -> None:
    """The kernels release the GIL, so a Python thread can switch builds while another is inside
    a step: every step still runs on one whole build and gives the reference result."""
    isas = _isas()
    if len(isas) < 2:
        pytest.skip("only one kernel build runs on this CPU")
    current = _C.cpu_isa()
    call = _AdamCall()
    reference, ref_norm = call()
    done = threading.Event()
    switches = 0
    errors: list[BaseException] = []

    def switch() -> None:
        nonlocal switches
        try:
            while not done.is_set():
                _C.set_cpu_isa(isas[switches % len(isas)])
                switches += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    switcher = threading.Thread(target=switch)
    try:
        switcher.start()
        wrong = 0
        for _ in range(60):
            tensors, norm = call()
            wrong += norm != ref_norm or not all(map(torch.equal, tensors, reference))
    finally:
        done.set()
        switcher.join()
        sys.setswitchinterval(interval)
        _C.set_cpu_isa(current)
    assert not errors
    assert wrong == 0
    assert switches > 60  # the builds did change under the steps


def test_set_cpu_isa_contract() -> None:
    """An unknown or unsupported build is refused and leaves the active one in place; each
    supported one becomes the active one."""
    current = _C.cpu_isa()
    try:
        with pytest.raises(ValueError, match="not built in or not supported"):
            _C.set_cpu_isa("sse9")
        assert _C.cpu_isa() == current
        for isa in _isas():
            _C.set_cpu_isa(isa)
            assert _C.cpu_isa() == isa
    finally:
        _C.set_cpu_isa(current)


# ------------------------------------------------------------------ many tensors on the team

#: more tensors than the step prepares on the calling thread alone (step_cpu.cpp kTeamPrepare)
MANY = 2_500


class _AdamTable:
    """``_C.adam_step``'s tables over ``MANY`` tensors: mostly small, some empty, one of several
    chunks; runs of three hyperparameter rows and flag sets, and step counters in runs of equal
    counts whose changes fall on and beside the rows where a team of 2 or 3 splits the list."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        sizes = [int(s) for s in torch.randint(0, 40, (MANY,), generator=gen)]
        sizes[7], sizes[MANY // 2] = 70_001, 0
        self.tensors = []
        for n in sizes:
            p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
            m, v = torch.randn(n, generator=gen) * 0.1, torch.rand(n, generator=gen) * 0.01
            self.tensors.append({"param": p, "grad": g, "exp_avg": m, "exp_avg_sq": v,
                                 "max_exp_avg_sq": v.clone(), "step": torch.zeros(())})
        counts = [3.0] * MANY
        for cut in (MANY // 3, MANY // 2, MANY // 2 + 1, 2 * MANY // 3 - 1):
            counts[cut:] = [c + 1.0 for c in counts[cut:]]
        for t, c in zip(self.tensors, counts):
            t["step"].fill_(c)
        rows = [dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1),
                dict(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.0),
                dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05)]
        which = [(i // 97) % 3 for i in range(MANY)]
        self.hyper = np.array([[rows[w][h] for h in _C.ADAM_HYPERS] for w in which])
        f = _C.STEP_FLAGS
        flag_sets = [f["decoupled_weight_decay"], f["amsgrad"], f["amsgrad"] | f["maximize"]]
        self.flags = np.array([flag_sets[(i // 131) % 3] for i in range(MANY)], np.int32)
        self.numels = np.array(sizes, np.int64)
        self.dtypes = np.zeros(MANY, np.int32)
        self.ptrs = np.array([[t[c].data_ptr() for c in _C.ADAM_COLUMNS] for t in self.tensors], np.uint64)

    def values(self) -> list[torch.Tensor]:
        """Every tensor of the table, step counters included."""
        return [t[c] for t in self.tensors for c in _C.ADAM_COLUMNS]

    def step(self, rows: slice = slice(None), threads: int = 2) -> None:
        """One ``_C.adam_step`` call over ``rows``."""
        _C.adam_step(self.ptrs[rows], self.numels[rows], self.dtypes[rows], self.flags[rows],
                     self.hyper[rows], 0.0, 0.75, num_threads=threads)


@pytest.mark.parametrize("threads", [2, 3])
def test_many_tensors_step_as_each_alone(threads: int) -> None:
    """A call over more tensors than the calling thread prepares alone (records, scalar sets and
    step counters made by the team, in segments): the same bits as one call per tensor, and as
    the call on one thread."""
    alone, one, team = _AdamTable(), _AdamTable(), _AdamTable()
    for i in range(MANY):
        alone.step(slice(i, i + 1), threads=1)
    one.step(threads=1)
    assert _C.last_num_threads() == 1
    team.step(threads=threads)
    assert _C.last_num_threads() == threads
    for a, b, c in zip(alone.values(), one.values(), team.values()):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_many_tensors_a_bad_row_moves_nothing() -> None:
    """The team validates every row before any step counter moves: a bad row anywhere (the first
    one reported) leaves every tensor as it was."""
    table = _AdamTable()
    before = [t.clone() for t in table.values()]
    col = {c: i for i, c in enumerate(_C.ADAM_COLUMNS)}
    good = table.ptrs.copy()
    for bad_rows, message in (([2_000], "tensor 2000: null grad pointer"),
                              ([2_400, 300], "tensor 300: null grad pointer"),
                              ([MANY - 1], "tensor 2499: null grad pointer")):
        table.ptrs = good.copy()
        table.ptrs[bad_rows, col["grad"]] = 0
        with pytest.raises(ValueError, match=message):
            table.step()
    table.ptrs = good
    table.dtypes[1_900] = 9
    with pytest.raises(ValueError, match="tensor 1900: unsupported dtype code 9"):
        table.step()
    table.dtypes[1_900] = 0
    size, table.numels[2_100] = table.numels[2_100], -5  # (it would skew the team's split of the chunks)
    with pytest.raises(ValueError, match="tensor 2100: negative size -5"):
        table.step()
    table.numels[2_100] = size
    table.ptrs[2_222, col["step"]] = 0
    with pytest.raises(ValueError, match="tensor 2222: null step pointer"):
        table.step()
    for a, b in zip(before, table.values()):
        assert torch.equal(a, b)


def test_many_sgd_tensors_on_the_team() -> None:
    """SGD over many tensors: a null momentum buffer far down the list refused before anything
    moves; then the same bits on one thread and on two."""
    gen = torch.Generator().manual_seed(4)
    sizes = [int(s) for s in torch.randint(1, 50, (MANY,), generator=gen)]

    def table() -> tuple[list[torch.Tensor], np.ndarray]:
        g = torch.Generator().manual_seed(5)
        ts = [torch.randn(3 * n, generator=g) for n in sizes]
        ptrs = np.array([[t.data_ptr() + 4 * n * k for k in range(3)] for t, n in zip(ts, sizes)], np.uint64)
        return ts, ptrs

    rows = [dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-4),
            dict(lr=0.05, momentum=0.0, dampening=0.0, weight_decay=0.0)]
    hyper = np.array([[rows[(i // 50) % 2][h] for h in _C.SGD_HYPERS] for i in range(MANY)])
    flags = np.array([_C.STEP_FLAGS["nesterov"] if i % 7 else 0 for i in range(MANY)], np.int32)
    numels, dtypes = np.array(sizes, np.int64), np.zeros(MANY, np.int32)
    (one, p1), (team, p2) = table(), table()
    before = [t.clone() for t in team]
    bad = p2.copy()
    bad[1_610, 2] = 0  # (row 1610 has momentum)
    with pytest.raises(ValueError, match="tensor 1610: null momentum_buffer pointer"):
        _C.sgd_step(bad, numels, dtypes, flags, hyper, 0.0, 1.0, num_threads=2)
    assert all(torch.equal(a, b) for a, b in zip(before, team))
    _C.sgd_step(p1, numels, dtypes, flags, hyper, 0.0, 1.0, num_threads=1)
    _C.sgd_step(p2, numels, dtypes, flags, hyper, 0.0, 1.0, num_threads=2)
    assert _C.last_num_threads() == 2
    assert all(torch.equal(a, b) for a, b in zip(one, team))
    assert not all(torch.equal(a, b) for a, b in zip(before, team))
