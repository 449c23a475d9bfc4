"""fastopt's own ``OptimWrapper`` / ``AmpOptimWrapper`` (what ``build_optim_wrapper`` returns
without mmengine) against mmengine 0.10.7's public wrapper API, with mmengine's own classes as the
oracle side by side: the same model, data and optimizer through both, then their attributes,
counts, loss factors, ``no_sync`` use, parameters, learning rates and logged values compared;
the errors mmengine raises; mmengine's param schedulers stepping fastopt's wrappers exactly as
they step mmengine's; and what stands in for mmengine's message hub where mmengine is absent."""

from __future__ import annotations

import contextlib
import copy
import importlib
import itertools
import logging
import math
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch
from torch import nn

from fastopt import optim as fo
from fastopt import wrapper as own

from .torch_release import needs_cpu_scaler

pytest.importorskip("mmengine")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import mmengine.optim as mmo
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.optim.scheduler import CosineRestartLR

ROOT = Path(__file__).resolve().parents[1]
_HUBS = itertools.count()
CLIPS = {"none": None, "norm": dict(max_norm=0.5), "value": dict(type="value", clip_value=0.02)}


# ------------------------------------------------------------------ helpers
def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))


def _optimizer(model: nn.Module, name: str = "SGD", source: str = "torch") -> torch.optim.Optimizer:
    """Two groups (weights; biases and the norm without weight decay): ``base_param_settings``."""
    decay = [m.weight for m in model if isinstance(m, nn.Linear)]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    groups = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
    if name == "SGD":
        cls, args = (fo.SGD if source == "fastopt" else torch.optim.SGD), dict(lr=0.1, momentum=0.9,
                                                                              weight_decay=1e-4)
    else:
        cls, args = (fo.AdamW if source == "fastopt" else torch.optim.AdamW), dict(lr=0.01, weight_decay=0.05)
    if source == "torch":
        args["foreach"] = False
    return cls(groups, **args)


def _fresh_hub() -> Any:
    """A new mmengine MessageHub, made the current one (what a wrapper built next logs to)."""
    return MessageHub.get_instance(f"fastopt-wrapper-api-{next(_HUBS)}")


def _pair(name: str = "SGD", source: str = "torch", seed: int = 0, **kwargs: Any
          ) -> tuple[nn.Module, Any, nn.Module, own.OptimWrapper]:
    """(model, mmengine's OptimWrapper) and (model, fastopt's), each logging to a hub of its own."""
    ref_model, our_model = _model(seed), _model(seed)
    _fresh_hub()
    ref = mmo.OptimWrapper(_optimizer(ref_model, name), **copy.deepcopy(kwargs))
    _fresh_hub()
    ours = own.OptimWrapper(_optimizer(our_model, name, source), **copy.deepcopy(kwargs))
    return ref_model, ref, our_model, ours


def _loss(model: nn.Module, i: int, scale: float = 10.0) -> torch.Tensor:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(i))
    return model(x).pow(2).mean() * scale


def _same(a: float, b: float, rel: float = 0.0) -> bool:
    """Equal floats (within ``rel``), NaN equal to NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or (rel > 0 and a == pytest.approx(b, rel=rel))


def _logged(wrapper: Any, key: str) -> float | None:
    scalars = wrapper.message_hub.log_scalars
    return float(scalars[key].current()) if key in scalars else None


def _assert_params(a: nn.Module, b: nn.Module, exact: bool) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        if exact:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.fixture
def mmengine_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    """mmengine's AmpOptimWrapper allowed to build without a GPU (its scaler replaced by the test)."""
    amp_module = importlib.import_module("mmengine.optim.optimizer.amp_optimizer_wrapper")
    monkeypatch.setattr(amp_module, "is_cuda_available", lambda: True)


def _mmengine_amp(**kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.cuda.amp.GradScaler without CUDA: deprecated, disabled
        return mmo.AmpOptimWrapper(**kwargs)


class _SyncCounter(nn.Module):
    """A model with DDP's ``no_sync``, recording whether the last forward ran inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _model()
        self.unsynced = False
        self.inside = False

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unsynced = self.inside
        return self.inner(x)


# ------------------------------------------------------------------ construction and errors
@pytest.mark.parametrize("clip", list(CLIPS))
def test_attributes_are_mmengines(clip: str) -> None:
    """Right after construction: mmengine's attributes with mmengine's values (``clip_grad_kwargs``
    None without clipping, ``grad_name`` / ``clip_func`` only with it, the counts at -1, the hub
    the current one, ``base_param_settings`` the last of ``param_groups``)."""
    kwargs = {} if CLIPS[clip] is None else dict(clip_grad=CLIPS[clip])
    _, ref, _, ours = _pair(**kwargs)
    assert ours.message_hub is MessageHub.get_current_instance()
    missing = object()
    for name in ("_accumulative_counts", "clip_grad_kwargs", "_inner_count", "inner_count", "_max_counts",
                 "_remainder_counts", "grad_name", "clip_func"):
        assert getattr(ours, name, missing) == getattr(ref, name, missing), name
    assert ours.defaults is ours.optimizer.defaults
    assert len(ours.param_groups) == len(ref.param_groups) == 3
    assert ours.param_groups[-1] is ours.base_param_settings
    theirs = ref.base_param_settings
    assert ours.base_param_settings.keys() == theirs.keys()
    assert torch.equal(ours.base_param_settings["params"], theirs["params"])
    assert {k: v for k, v in ours.base_param_settings.items() if k != "params"} == \
        {k: v for k, v in theirs.items() if k != "params"}


def _first_error(build: Callable[[], Any], model: nn.Module) -> BaseException | None:
    """The exception of building a wrapper, or of its first clipped step (mmengine checks some
    arguments only there); None when both pass."""
    try:
        wrapper = build()
        _loss(model, 0).backward()
        wrapper.step()
    except Exception as exc:  # the oracle: whatever mmengine raises
        return exc
    return None


BAD_ARGUMENTS = {
    "clip_grad=[]": dict(clip_grad=[]),
    "clip_grad={}": dict(clip_grad={}),
    "clip_grad=1.0": dict(clip_grad=1.0),
    "type only (norm)": dict(clip_grad=dict(type="norm")),
    "type only (value)": dict(clip_grad=dict(type="value")),
    "no max_norm": dict(clip_grad=dict(norm_type=2)),
    "max_norm=None": dict(clip_grad=dict(max_norm=None)),
    "clip_value=None": dict(clip_grad=dict(type="value", clip_value=None)),
    "accumulative_counts=0": dict(accumulative_counts=0),
    "accumulative_counts=-2": dict(accumulative_counts=-2),
    "accumulative_counts='2'": dict(accumulative_counts="2"),
    "accumulative_counts=None": dict(accumulative_counts=None),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_an_instance_of_mmengines_error(case: str) -> None:
    """What mmengine rejects (when built, or at its first clipped step) fastopt rejects when the
    wrapper is built, with an exception that is an instance of mmengine's class."""
    kwargs = BAD_ARGUMENTS[case]
    model = _model()
    theirs = _first_error(lambda: mmo.OptimWrapper(_optimizer(model), **copy.deepcopy(kwargs)), model)
    assert theirs is not None
    with pytest.raises(type(theirs)):
        own.OptimWrapper(_optimizer(_model(), source="fastopt"), **copy.deepcopy(kwargs))
    if isinstance(theirs, AssertionError) and "clip_grad" in case and "type" not in case:
        with pytest.raises(AssertionError, match="If `clip_grad` is not None"):
            own.OptimWrapper(_optimizer(_model()), **copy.deepcopy(kwargs))


@pytest.mark.parametrize("counts", [2.0, np.int64(3)], ids=["float", "numpy int"])
def test_accumulative_counts_mmengine_accepts(counts: float) -> None:
    """Counts mmengine takes (it checks ``> 0`` only: a float, a numpy integer from a computed
    config) build and update on the same calls."""
    ref_model, ref, our_model, ours = _pair(accumulative_counts=counts)
    for i in range(4):
        ref.update_params(_loss(ref_model, i))
        ours.update_params(_loss(our_model, i))
        assert ours.should_update() == ref.should_update()
        _assert_params(ref_model, our_model, exact=True)


def test_repr_is_mmengines() -> None:
    _, ref, _, ours = _pair(accumulative_counts=3)
    assert repr(ours) == repr(ref)


@needs_cpu_scaler
def test_calls_on_a_mock_optimizer_loss_and_scaler_are_mmengines() -> None:
    """mmengine's own suite with mocks: step / zero_grad reach the optimizer, backward the loss,
    AmpOptimWrapper's backward scales the loss and its step goes through the scaler's step and
    update(_scale_update_param)."""
    optimizer = MagicMock(spec=torch.optim.Optimizer)
    optimizer.defaults, optimizer.param_groups = {}, [{}]
    wrapper = own.OptimWrapper(optimizer)
    wrapper.step()
    optimizer.step.assert_called_with()
    wrapper.zero_grad()
    optimizer.zero_grad.assert_called_with()
    loss = MagicMock()
    wrapper.backward(loss)
    loss.backward.assert_called_with()
    assert wrapper.inner_count == 1
    amp = own.AmpOptimWrapper(optimizer=optimizer)
    amp.loss_scaler = MagicMock()
    scaled = MagicMock()
    amp.loss_scaler.scale = MagicMock(return_value=scaled)
    amp.backward(1)
    amp.loss_scaler.scale.assert_called_with(1)
    scaled.backward.assert_called_with()
    amp.step()
    amp.loss_scaler.step.assert_called_with(optimizer)
    amp.loss_scaler.update.assert_called_with(amp._scale_update_param)


# ------------------------------------------------------------------ accumulation and counts
def _record_calls(wrapper: Any) -> list[tuple]:
    """Replace backward / step / zero_grad with recorders (mmengine's own test does so): each call
    appends ``(what, value)``."""
    calls: list[tuple] = []

    def backward(loss: torch.Tensor, **kwargs: Any) -> None:
        wrapper._inner_count += 1
        calls.append(("backward", float(loss), wrapper.inner_count))

    wrapper.backward = backward
    wrapper.step = lambda **kwargs: calls.append(("step", kwargs))
    wrapper.zero_grad = lambda **kwargs: calls.append(("zero_grad", kwargs))
    return calls


def test_update_params_calls_follow_mmengine() -> None:
    """mmengine's update_params scenario, call by call: the loss factor (1, the count, the
    remainder once the total is known), when step / zero_grad run, a resumed count, the last
    call of a total the count does not divide."""
    model = _model()
    runs = []
    for cls in (mmo.OptimWrapper, own.OptimWrapper):
        one = torch.tensor(1.0)
        w = cls(_optimizer(_model()), accumulative_counts=1)
        first = _record_calls(w)
        w.update_params(one, step_kwargs=dict(closure=None))
        w = cls(_optimizer(_model()), accumulative_counts=3)
        recorded = _record_calls(w)
        for _ in range(3):
            w.update_params(one)
        w._inner_count = 99  # the end of training without initialize_count_status
        w.update_params(one)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w.initialize_count_status(model, 99, 100)
            w.update_params(one)
            w.initialize_count_status(model, 96, 100)
        for _ in range(4):
            w.update_params(one)
        runs.append(first + recorded)
    assert runs[1] == runs[0]


@pytest.mark.parametrize(("accumulate", "start", "total"), [(1, 0, 5), (3, 0, 10), (4, 0, 10), (3, 2, 11),
                                                           (3, None, None)])
def test_counts_follow_mmengine(accumulate: int, start: int | None, total: int | None) -> None:
    """should_sync before each call, the loss factor, should_update after it and inner_count, with
    and without ``initialize_count_status`` (a resumed count, remainders 1 and 2)."""
    seen = []
    for cls in (mmo.OptimWrapper, own.OptimWrapper):
        model = _model()
        w = cls(_optimizer(model), accumulative_counts=accumulate)
        if start is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w.initialize_count_status(model, start, total)
        row = []
        for i in range((total or 12) - (start or 0)):
            sync, factor = w.should_sync(), float(w.scale_loss(torch.tensor(1.0)))
            w.backward(_loss(model, i))
            row.append((sync, factor, w.should_update(), w.inner_count, w._max_counts, w._remainder_counts))
        seen.append(row)
    assert seen[1] == seen[0]


@pytest.mark.parametrize("case", ["resumed mid-accumulation", "batch norm"])
def test_initialize_count_status_logs_mmengines_warnings(case: str) -> None:
    """The warnings mmengine's wrapper logs (to mmengine's current logger), word for word."""
    logger = MMLogger.get_current_instance()
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)) if case == "batch norm" else _model()
    start = 2 if case == "resumed mid-accumulation" else 0
    logged = []
    for cls in (mmo.OptimWrapper, own.OptimWrapper):
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger.addHandler(handler)
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            cls(_optimizer(_model()), accumulative_counts=3).initialize_count_status(model, start, 100)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        logged.append([(r.levelno, r.getMessage()) for r in records])
    assert len(logged[0]) == 1
    assert logged[1] == logged[0]


@pytest.mark.parametrize("accumulate", [1, 3])
def test_optim_context_skips_gradient_sync_as_mmengine(accumulate: int) -> None:
    """``optim_context(model)`` enters ``model.no_sync()`` on exactly the forward passes mmengine's
    does (those not followed by an update), the last one of the total included."""
    seen = []
    for cls in (mmo.OptimWrapper, own.OptimWrapper):
        model = _SyncCounter()
        w = cls(_optimizer(model.inner), accumulative_counts=accumulate)
        w.initialize_count_status(model.inner, 0, 7)
        row = []
        for i in range(7):
            with w.optim_context(model):
                loss = _loss(model, i)
            w.update_params(loss)
            row.append(model.unsynced)
        seen.append(row)
    assert seen[1] == seen[0]
    assert any(seen[0]) == (accumulate > 1)


@needs_cpu_scaler
def test_amp_optim_context_autocasts_and_skips_sync(mmengine_amp: None) -> None:
    """AmpOptimWrapper's context: mmengine's accumulation context and autocast to ``cast_dtype``."""
    seen = []
    for cls in (_mmengine_amp, own.AmpOptimWrapper):
        model = _SyncCounter()
        w = cls(optimizer=_optimizer(model.inner), accumulative_counts=2, dtype="bfloat16")
        row = []
        for i in range(4):
            with w.optim_context(model):
                out = model(torch.randn(2, 4, generator=torch.Generator().manual_seed(i)))
            row.append((model.unsynced, out.dtype))
            w._inner_count += 1
        seen.append(row)
    assert seen[1] == seen[0] == [(True, torch.bfloat16), (False, torch.bfloat16)] * 2


# ------------------------------------------------------------------ training side by side
@pytest.mark.parametrize("counts", [(3, 10), (4, 10)])
@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("source", ["torch", "fastopt"])
@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_training_matches_mmengine(name: str, source: str, clip: str, counts: tuple[int, int]) -> None:
    """Ten iterations of ``optim_context`` + ``update_params`` with accumulation and a remainder
    (1 or 2 calls) through mmengine's wrapper and fastopt's: after each, the same parameters (bit
    for bit over torch's optimizer; within fp32 rounding over fastopt's, whose clipping norm is
    summed natively), inner count, learning rates, momenta and logged ``train/grad_norm``; the
    same optimizer state at the end."""
    accumulate, total = counts
    kwargs: dict[str, Any] = dict(accumulative_counts=accumulate)
    if CLIPS[clip] is not None:
        kwargs["clip_grad"] = CLIPS[clip]
    ref_model, ref, our_model, ours = _pair(name, source, **kwargs)
    ref.initialize_count_status(ref_model, 0, total)
    ours.initialize_count_status(our_model, 0, total)
    exact = source == "torch"
    for i in range(total):
        for model, w in ((ref_model, ref), (our_model, ours)):
            with w.optim_context(model):
                loss = _loss(model, i)
            w.update_params(loss)
        _assert_params(ref_model, our_model, exact)
        assert ours.inner_count == ref.inner_count == i + 1
        assert ours.get_lr() == ref.get_lr() and ours.get_momentum() == ref.get_momentum()
        for key in ("train/grad_norm", "train/grad_value"):
            theirs, mine = _logged(ref, key), _logged(ours, key)
            assert (theirs is None) == (mine is None), key
            if theirs is not None:
                assert _same(mine, theirs, rel=0 if exact else 1e-5), (i, mine, theirs)
    if clip == "norm":
        assert _logged(ours, "train/grad_norm") is not None
    if exact:
        mine, theirs = ours.state_dict(), ref.state_dict()
        assert mine.keys() == theirs.keys()
        torch.testing.assert_close(mine["state"], theirs["state"], rtol=0, atol=0)
        assert mine["param_groups"] == theirs["param_groups"]
        # each loads the other's checkpoint
        ours.load_state_dict(theirs)
        ref.load_state_dict(mine)


@needs_cpu_scaler
@pytest.mark.parametrize("source", ["torch", "fastopt"])
def test_amp_training_matches_mmengine(mmengine_amp: None, source: str) -> None:
    """AmpOptimWrapper with accumulation (2, a remainder of 1), clip_grad and an overflowing
    iteration, against mmengine's with the same CPU GradScaler: the same parameters, scale,
    scaler state, counts and logged norm after every iteration; the scaler's state in the
    checkpoint."""
    ref_model, our_model = _model(), _model()
    _fresh_hub()
    ref = _mmengine_amp(optimizer=_optimizer(ref_model), accumulative_counts=2, clip_grad=dict(max_norm=0.5),
                        loss_scale=dict(init_scale=2.0**12, growth_interval=2))
    ref.loss_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    _fresh_hub()
    ours = own.AmpOptimWrapper(optimizer=_optimizer(our_model, source=source), accumulative_counts=2,
                               clip_grad=dict(max_norm=0.5),
                               loss_scale=dict(init_scale=2.0**12, growth_interval=2))
    exact = source == "torch"
    for model, w in ((ref_model, ref), (our_model, ours)):
        w.initialize_count_status(model, 0, 7)
    for i in range(7):
        for model, w in ((ref_model, ref), (our_model, ours)):
            loss = _loss(model, i) * (math.inf if i == 3 else 1.0)
            w.update_params(loss)
        _assert_params(ref_model, our_model, exact)
        assert ours.inner_count == ref.inner_count
        assert ours.loss_scaler.state_dict() == ref.loss_scaler.state_dict(), i
        theirs, mine = _logged(ref, "train/grad_norm"), _logged(ours, "train/grad_norm")
        assert (theirs is None) == (mine is None)
        if theirs is not None:
            assert _same(mine, theirs, rel=0 if exact else 1e-5), (i, mine, theirs)
    assert ours.state_dict()["loss_scaler"] == ref.state_dict()["loss_scaler"]


# ------------------------------------------------------------------ clipping on its own
@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clip_grad_on_its_own_clips_now_and_logs_as_mmengine(clip: str) -> None:
    """``_clip_grad()`` called outside ``step`` (a hook, a custom loop) clips the gradients in place
    and logs ``train/grad_norm`` at once, as mmengine's does (clipping by value logs nothing), with
    fastopt's optimizer too; a later ``step()`` then clips again, as mmengine's does."""
    ref_model, ref, our_model, ours = _pair(source="fastopt", clip_grad=CLIPS[clip])
    for model, w in ((ref_model, ref), (our_model, ours)):
        _loss(model, 0, scale=100.0).backward()
        w._clip_grad()
    for p, q in zip(ref_model.parameters(), our_model.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert _logged(ours, "train/grad_norm") == _logged(ref, "train/grad_norm")
    assert (_logged(ours, "train/grad_norm") is None) == (clip == "value")
    assert "train/grad_value" not in ours.message_hub.log_scalars
    ref.step()
    ours.step()
    _assert_params(ref_model, our_model, exact=False)
    if clip == "norm":
        assert _same(_logged(ours, "train/grad_norm"), _logged(ref, "train/grad_norm"), rel=1e-5)


def test_step_calls_a_subclass_clip_grad() -> None:
    """A subclass's own ``_clip_grad`` is what ``step`` calls, once per update, as mmengine's step
    calls it (the fused clip is fastopt's own ``_clip_grad`` only)."""
    calls = []

    def counting(base: type) -> type:
        class Counting(base):  # type: ignore[misc, valid-type]
            def _clip_grad(self) -> None:
                calls.append(base)
                super()._clip_grad()

        return Counting

    ref_model, our_model = _model(), _model()
    ref = counting(mmo.OptimWrapper)(_optimizer(ref_model), clip_grad=dict(max_norm=0.5))
    ours = counting(own.OptimWrapper)(_optimizer(our_model, source="fastopt"), clip_grad=dict(max_norm=0.5))
    for i in range(3):
        ref.update_params(_loss(ref_model, i))
        ours.update_params(_loss(our_model, i))
    assert calls == [mmo.OptimWrapper, own.OptimWrapper] * 3
    _assert_params(ref_model, our_model, exact=False)


def test_get_momentum_is_mmengines() -> None:
    """momentum, beta1, or the integer 0 for an optimizer with neither (values and types)."""
    model = _model()
    for opt in (torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.8),
                torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.9)),
                torch.optim.Adagrad(model.parameters(), lr=0.1)):
        mine, theirs = own.OptimWrapper(opt).get_momentum(), mmo.OptimWrapper(opt).get_momentum()
        assert mine == theirs
        assert [type(v) for v in mine["momentum"]] == [type(v) for v in theirs["momentum"]]


# ------------------------------------------------------------------ AmpOptimWrapper's arguments
@needs_cpu_scaler
@pytest.mark.parametrize("dtype", [None, "float16", "bfloat16", "float32", "float64", torch.bfloat16,
                                   "float8", 16])
def test_amp_arguments_are_mmengines(mmengine_amp: None, dtype: Any) -> None:
    """mmengine's argument order (``AmpOptimWrapper(loss_scale, dtype, ...)``, the optimizer by
    keyword), its dtypes (an AssertionError for others), ``_scale_update_param`` and loss_scale
    error; fastopt's order (the optimizer first) still builds."""
    opt = _optimizer(_model())
    try:
        theirs = _mmengine_amp(loss_scale="dynamic", dtype=dtype, optimizer=opt)
    except AssertionError:
        with pytest.raises(AssertionError, match="dtype should be"):
            own.AmpOptimWrapper("dynamic", dtype, optimizer=opt)
        return
    ours = own.AmpOptimWrapper("dynamic", dtype, optimizer=opt)
    assert ours.cast_dtype == theirs.cast_dtype
    assert ours._scale_update_param is theirs._scale_update_param is None
    for loss_scale in (dict(init_scale=1.0, growth_factor=2.0), 512.0):
        mine = own.AmpOptimWrapper(loss_scale, optimizer=opt)
        theirs = _mmengine_amp(loss_scale=loss_scale, optimizer=opt)
        assert mine._scale_update_param == theirs._scale_update_param
        assert mine.loss_scaler.get_scale() == (1.0 if isinstance(loss_scale, dict) else 512.0)
    with pytest.raises(TypeError, match="loss_scale must be of type float"):
        own.AmpOptimWrapper(optimizer=opt, loss_scale="unknown")
    assert own.AmpOptimWrapper(opt, loss_scale=64.0, dtype=dtype).loss_scaler.get_scale() == 64.0
    assert own.AmpOptimWrapper.valid_dtypes == mmo.AmpOptimWrapper.valid_dtypes


@needs_cpu_scaler
def test_amp_use_fsdp_takes_a_sharded_scaler() -> None:
    """``use_fsdp=True`` (mmengine 0.8.0 on): torch's ShardedGradScaler, as mmengine builds."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    ours = own.AmpOptimWrapper(optimizer=_optimizer(_model()), use_fsdp=True)
    assert type(ours.loss_scaler) is ShardedGradScaler


# ------------------------------------------------------------------ mmengine's param schedulers
def _schedulers() -> dict[str, Callable[[Any], Any]]:
    return {
        "LinearLR": lambda o: mmo.LinearLR(o, start_factor=0.1, end=4, by_epoch=False),
        "MultiStepLR": lambda o: mmo.MultiStepLR(o, milestones=[2, 4], gamma=0.5, by_epoch=False),
        "StepLR": lambda o: mmo.StepLR(o, step_size=2, gamma=0.5, by_epoch=False),
        "ExponentialLR": lambda o: mmo.ExponentialLR(o, gamma=0.8, by_epoch=False),
        "ConstantLR": lambda o: mmo.ConstantLR(o, factor=0.5, end=3, by_epoch=False),
        "PolyLR": lambda o: mmo.PolyLR(o, eta_min=1e-4, power=2.0, end=6, by_epoch=False),
        "CosineAnnealingLR": lambda o: mmo.CosineAnnealingLR(o, T_max=6, eta_min=1e-4, by_epoch=False),
        "CosineRestartLR": lambda o: CosineRestartLR(o, periods=[3, 4], restart_weights=[1.0, 0.5],
                                                     eta_min=1e-4, by_epoch=False),
        "OneCycleLR": lambda o: mmo.OneCycleLR(o, eta_max=0.2, total_steps=8, by_epoch=False),
        "ReduceOnPlateauLR": lambda o: mmo.ReduceOnPlateauLR(o, monitor="loss", patience=0, factor=0.5),
        "LinearMomentum": lambda o: mmo.LinearMomentum(o, start_factor=0.5, end=4, by_epoch=False),
        "MultiStepMomentum": lambda o: mmo.MultiStepMomentum(o, milestones=[2, 5], gamma=0.9,
                                                             by_epoch=False),
        "CosineAnnealingMomentum": lambda o: mmo.CosineAnnealingMomentum(o, T_max=6, eta_min=0.5,
                                                                         by_epoch=False),
    }


#: the group keys a schedule sets or reads (fastopt's optimizer differs from torch's in ``foreach``)
SCHEDULED = ("lr", "initial_lr", "momentum", "initial_momentum", "betas", "weight_decay")


def _schedule_view(wrapper: Any, scheduler: Any) -> tuple:
    """Everything a schedule sets or reads: every group's hyperparameters (``base_param_settings``
    included), get_lr / get_momentum, the scheduler's last values and state, the step counter."""
    groups = [{k: v for k, v in g.items() if k in SCHEDULED} for g in wrapper.param_groups]
    return (groups, wrapper.get_lr(), wrapper.get_momentum(), scheduler.get_last_value(),
            scheduler.state_dict(), getattr(wrapper, "_global_step", None))


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
@pytest.mark.parametrize("scheduler", list(_schedulers()))
def test_mmengine_scheduler_steps_fastopt_wrapper_as_mmengines(scheduler: str, name: str) -> None:
    """An mmengine param scheduler over fastopt's wrapper (fastopt's optimizer, two groups and
    ``base_param_settings``) against the same scheduler over mmengine's wrapper: after every
    iteration the same learning rates / momenta / betas in every group, the same scheduler state
    and step counts, and the same parameters within fp32 rounding."""
    make = _schedulers()[scheduler]
    ref_model, ref, our_model, ours = _pair(name, "fastopt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "optimizer.step() overridden" warning either
        sched_ref, sched_ours = make(ref), make(ours)
        for i in range(8):
            ref.update_params(_loss(ref_model, i, scale=1.0))
            ours.update_params(_loss(our_model, i, scale=1.0))
            if scheduler == "ReduceOnPlateauLR":
                metrics = dict(loss=1.0)  # never better: the rate falls every epoch
                sched_ref.step(metrics)
                sched_ours.step(metrics)
            else:
                sched_ref.step()
                sched_ours.step()
            assert _schedule_view(ours, sched_ours) == _schedule_view(ref, sched_ref), i
            _assert_params(ref_model, our_model, exact=False)


@needs_cpu_scaler
def test_mmengine_scheduler_steps_fastopt_amp_wrapper(mmengine_amp: None) -> None:
    """The same for fastopt's AmpOptimWrapper (a loss scale on the CPU) against mmengine's."""
    ref_model, our_model = _model(), _model()
    ref = _mmengine_amp(optimizer=_optimizer(ref_model), loss_scale=256.0)
    ref.loss_scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    ours = own.AmpOptimWrapper(_optimizer(our_model, source="fastopt"), loss_scale=256.0)
    sched_ref = mmo.CosineAnnealingLR(ref, T_max=5, by_epoch=False)
    sched_ours = mmo.CosineAnnealingLR(ours, T_max=5, by_epoch=False)
    for i in range(6):
        ref.update_params(_loss(ref_model, i))
        ours.update_params(_loss(our_model, i))
        sched_ref.step()
        sched_ours.step()
        assert _schedule_view(ours, sched_ours) == _schedule_view(ref, sched_ref), i
        _assert_params(ref_model, our_model, exact=False)


def test_schedulers_check_mmengines_base_class() -> None:
    """fastopt's wrappers are virtual subclasses of mmengine's BaseOptimWrapper (what the
    schedulers check), not of mmengine's OptimWrapper (what a Runner checks); anything else is
    still refused with mmengine's own TypeError."""
    ours = own.OptimWrapper(_optimizer(_model(), source="fastopt"))
    assert isinstance(ours, mmo.BaseOptimWrapper) and issubclass(own.AmpOptimWrapper, mmo.BaseOptimWrapper)
    assert not isinstance(ours, mmo.OptimWrapper)

    class Impostor:
        param_groups = ours.param_groups

    with pytest.raises(TypeError, match="should be an Optimizer"):
        mmo.LinearLR(Impostor(), start_factor=0.5)


# ------------------------------------------------------------------ without mmengine
WITHOUT_MMENGINE = r"""
import sys, warnings
sys.modules["mmengine"] = None  # mmengine is not installed, as far as this process can tell
import torch
import fastopt
from fastopt import wrapper as own
model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 2))
w = fastopt.build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9),
                                            accumulative_counts=2, clip_grad=dict(max_norm=0.5)))
assert type(w) is own.OptimWrapper, type(w)
assert isinstance(w.message_hub, own.ScalarHub) and w.message_hub is own.ScalarHub.get_current_instance()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    w.initialize_count_status(model, 1, 5)
messages = [str(c.message) for c in caught]
assert any("Resumed iteration number" in m for m in messages), messages
assert any("BatchNorm" in m for m in messages), messages
assert all(c.filename == "<string>" for c in caught), [c.filename for c in caught]
for i in range(4):
    with w.optim_context(model):
        loss = model(torch.randn(3, 4)).pow(2).sum() * 10
    w.update_params(loss)
history = w.message_hub.get_scalar("train/grad_norm")
assert history.current() == float(w.grad_norm) and len(history.data[0]) == 3, history.data
try:
    w.message_hub.get_scalar("train/nothing")
except KeyError:
    pass
else:
    raise AssertionError("no KeyError")
assert own.declare_to_mmengine() is False
assert not [m for m in sys.modules if m.startswith("mmengine.")], "mmengine was imported"
print("ok")
"""


def test_without_mmengine_a_stand_in_hub_and_no_import() -> None:
    """Where mmengine cannot be imported: ``build_optim_wrapper`` gives fastopt's wrapper, which
    logs to ``ScalarHub`` (read as mmengine's hub is read), warns with UserWarnings pointing at
    the caller, clips, accumulates to the end of the total, and imports nothing of mmengine."""
    done = subprocess.run([sys.executable, "-c", WITHOUT_MMENGINE], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ok"
