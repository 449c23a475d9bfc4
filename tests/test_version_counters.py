"""Version counters: fastopt's kernels change tensors in place behind autograd's back, and count
each change as torch's in-place ops do, so that autograd refuses a backward through values a
step has changed (and an inference tensor refuses the step) exactly where torch's own step does.

torch's default path (``foreach=False`` on the CPU) is the oracle throughout.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

import fastopt
from fastopt import _kernels as K
from fastopt import _tiers
from fastopt import optim as fo

from .torch_release import needs_cpu_scaler, needs_fused_on_cpu

pytest.importorskip("fastopt._C")

PAIRS = {"SGD": (fo.SGD, torch.optim.SGD), "Adam": (fo.Adam, torch.optim.Adam),
         "AdamW": (fo.AdamW, torch.optim.AdamW)}
OPTS = {"SGD": dict(lr=0.1, momentum=0.9, nesterov=True), "Adam": dict(lr=0.05, amsgrad=True),
        "AdamW": dict(lr=0.05, weight_decay=0.1)}
#: the tiers whose step the tests check (each set up by ``_optimizers``)
TIERS = ("native", "flat", "torch-fused")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _optimizers(name: str, tier: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """fastopt's optimizer set up to step in ``tier``, and torch's on an equal model."""
    ours_cls, ref_cls = PAIRS[name]
    ours = ours_cls(_model().parameters(), **OPTS[name])
    ref = ref_cls(_model().parameters(), foreach=False, **OPTS[name])
    if tier == "flat":
        ours.use_flat_buffers()
    elif tier == "torch-fused":  # torch's fused kernels on the CPU stand in for a GPU's
        if needs_fused_on_cpu.args[0]:
            pytest.skip(needs_fused_on_cpu.kwargs["reason"])
        monkeypatch.setattr(K, "group_native", lambda group, params_checked=False: False)
        monkeypatch.setattr(_tiers, "TORCH_FUSED_DEVICES", ("cpu",))
    return ours, ref


def _params(opt: Any) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _model_of(opt: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of the two-layer model whose parameters ``opt`` holds."""
    w1, b1, w2, b2 = _params(opt)
    return lambda x: torch.tanh(x @ w1.t() + b1) @ w2.t() + b2


def _backward_after_step(opt: Any, scaler: Any = None) -> str:
    """A step between a forward and its backward: 'raised' with autograd's in-place error, or
    'ran' where the backward went through."""
    forward = _model_of(opt)
    x = torch.linspace(-1, 1, 12).view(3, 4)
    forward(x).sum().backward()
    opt.step()  # a first step, which makes the state
    kept = forward(x).sum()  # a graph that saves the parameters
    opt.zero_grad()
    loss = forward(x).sum()
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    try:
        kept.backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e), e
        return "raised"
    return "ran"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", PAIRS)
def test_a_backward_through_stepped_parameters_raises_as_torchs(name: str, tier: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ours, ref = _optimizers(name, tier, monkeypatch)
    assert _backward_after_step(ref) == "raised"
    assert _backward_after_step(ours) == "raised"
    assert ours.fastopt_tier == tier


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", PAIRS)
def test_each_step_counts_in_every_stepped_parameter_only(name: str, tier: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every parameter a step changes counts it; one without a gradient, which torch's step
    skips, does not (flat-buffer mode steps every parameter: a missing gradient is zero there)."""
    ours, ref = _optimizers(name, tier, monkeypatch)
    for opt in (ours, ref):
        ps = _params(opt)
        for step in range(3):
            for p in ps:
                p.grad = torch.ones_like(p)
            ps[1].grad = None if step == 2 else ps[1].grad
            before = [p._version for p in ps]
            opt.step()
            skipped = step == 2 and (opt is ref or tier != "flat")
            for i, (p, v) in enumerate(zip(ps, before)):
                assert (p._version == v) if (i == 1 and skipped) else (p._version > v), (
                    type(opt).__module__, step, i)
    assert ours.fastopt_tier == tier


@needs_cpu_scaler
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("tier", TIERS)
def test_a_loss_scaled_step_counts_in_the_gradients_where_torchs_clip_would(
        tier: str, clip: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a loss scale the step writes the gradients back unscaled (and clipped): torch's
    ``unscale_`` leaves their counters as they were, its in-place clip counts one change. Against
    GradScaler's ``unscale_`` + ``clip_grad_norm_`` + ``step`` on torch's AdamW."""
    ours, ref = _optimizers("AdamW", tier, monkeypatch)
    wrapper = fastopt.AmpOptimWrapper(ours, loss_scale=256.0,
                                      clip_grad=None if clip is None else dict(max_norm=clip))
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x = torch.linspace(-1, 1, 12).view(3, 4)
    ours_fw, ref_fw = _model_of(ours), _model_of(ref)
    counted = {"ours": [], "torch": []}
    for _ in range(2):
        wrapper.zero_grad()
        wrapper.backward(ours_fw(x).sum())
        grads = [p.grad for p in _params(ours)]
        before = [g._version for g in grads]
        wrapper.step()
        counted["ours"].append([g._version - v for g, v in zip(grads, before)])
        ref.zero_grad()
        scaler.scale(ref_fw(x).sum()).backward()
        grads = [p.grad for p in _params(ref)]
        before = [g._version for g in grads]
        scaler.unscale_(ref)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(_params(ref), clip)
        scaler.step(ref)
        scaler.update()
        counted["torch"].append([g._version - v for g, v in zip(grads, before)])
    assert [[d > 0 for d in step] for step in counted["ours"]] == [
        [d > 0 for d in step] for step in counted["torch"]], counted
    assert ours.fastopt_tier == tier


@needs_cpu_scaler
def test_a_skipped_loss_scaled_step_counts_nothing() -> None:
    """GradScaler skips a step with inf gradients: nothing changes, nothing is counted."""
    for cls in (fo.AdamW, torch.optim.AdamW):
        model = _model()
        opt = cls(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        scaler.scale(model(torch.ones(2, 4)).sum()).backward()
        model[0].weight.grad[0, 0] = float("inf")
        before = [p._version for p in model.parameters()]
        scaler.step(opt)
        assert [p._version for p in model.parameters()] == before, cls


@pytest.mark.parametrize("torch_bump", [True, False])
@pytest.mark.parametrize("name", PAIRS)
def test_an_inference_tensor_refuses_the_step_as_in_torch(name: str, torch_bump: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch's bump and without it (torch's increment_version, which skips inference
    tensors, is not the one to refuse them there)."""
    if not torch_bump:
        monkeypatch.setattr(K, "BUMP_VERSION", 0)
    errors = []
    for cls in PAIRS[name]:
        with torch.inference_mode():
            t = torch.zeros(3)
        t.grad = torch.ones(3)
        with pytest.raises(RuntimeError) as e:
            cls([t], **OPTS[name]).step()
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    assert "inference tensor" in errors[0]


def test_without_torchs_bump_the_python_api_counts_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torch exports no bump fastopt can call, torch's increment_version counts instead."""
    monkeypatch.setattr(K, "BUMP_VERSION", 0)
    ours, _ = _optimizers("AdamW", "native", monkeypatch)
    assert _backward_after_step(ours) == "raised"
    assert ours.fastopt_tier == "native"


def needs_native_bump() -> None:
    """Skip under FASTOPT_DIRECT_READS=0 (nothing native is used); else torch must export the
    bump and fastopt must have taken it (its probe agreed with torch)."""
    if os.environ.get("FASTOPT_DIRECT_READS") == "0":
        pytest.skip("FASTOPT_DIRECT_READS=0: no native version bump")
    assert K.BUMP_VERSION, "torch's bump_version not found, or it disagreed with torch on a probe"


def test_bump_versions_counts_once_per_tensor_and_hands_back_other_types() -> None:
    needs_native_bump()

    class Other(torch.Tensor):
        pass

    base = torch.arange(6.0)
    param = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    other = torch.zeros(2).as_subclass(Other)
    tensors = [base[1:], param, torch.zeros((), dtype=torch.bfloat16), other]
    before = [t._version for t in tensors]
    for k, version in enumerate((0, K.VERSION_WORD)):  # with and without the counters prefetched
        left = K._C.bump_versions(tensors, K.GATHER_METHODS, K.PLAIN_TYPES, K.BUMP_VERSION, version)
        assert len(left) == 1 and left[0] is other
        assert [t._version for t in tensors] == [v + k + 1 for v in before[:3]] + [before[3]]
        assert base._version == before[0] + k + 1  # a view shares its base's counter
    K.bump_versions(tensors)
    assert [t._version for t in tensors] == [v + 3 for v in before[:3]] + [before[3] + 1]
    with pytest.raises(ValueError, match="multiple of 8"):
        K._C.bump_versions(tensors, K.GATHER_METHODS, K.PLAIN_TYPES, K.BUMP_VERSION, 12)


def test_the_version_word_points_at_each_tensors_counter() -> None:
    """What the bump pass prefetches: the counter torch's ``_version`` reads (torch 2.13: a
    VersionCounter whose count follows its reference counts). Where fastopt found no layout,
    nothing is prefetched."""
    needs_native_bump()
    if K._LAYOUT == K.NO_LAYOUT:
        assert K.VERSION_WORD == 0
        return
    assert K.VERSION_WORD, "a layout was found, but no version word"
    base = torch.zeros(4)
    tensors = [base, base[1:], torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)), torch.zeros(3)]
    tensors[3].add_(1).add_(1).add_(1)
    words = [ctypes.c_uint64.from_address(t._cdata + K.VERSION_WORD).value for t in tensors]
    assert words[0] == words[1] and len(set(words)) == 3
    if torch.__version__.startswith("2.13."):
        assert [ctypes.c_uint32.from_address(w + 16).value for w in words] == [t._version for t in tensors]


def test_bump_versions_raises_torchs_error_for_an_inference_tensor() -> None:
    needs_native_bump()
    with torch.inference_mode():
        t = torch.zeros(2)
    ok = torch.zeros(2)
    with pytest.raises(RuntimeError) as ours:
        K.bump_versions([ok, t])
    with pytest.raises(RuntimeError) as theirs:
        t.add_(1)
    assert str(ours.value) == str(theirs.value)
    assert ok._version == 1  # the ones before it counted
    with torch.inference_mode():  # inside inference mode torch lets it change, uncounted
        K.bump_versions([t])


@needs_cpu_scaler
@pytest.mark.parametrize("torch_bump", [True, False])
def test_a_coefficient_under_a_loss_scale_counts_in_held_gradients(torch_bump: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain coefficient (``step(grad_mult=...)``) under a loss scale: the native read holds the
    gradients by its own slots, and the step counts in them what torch's in-place ``mul_``
    counts (GradScaler's ``unscale_`` counting nothing); with or without torch's bump found."""
    if not torch_bump:
        monkeypatch.setattr(K, "BUMP_VERSION", 0)
    ours, ref = _optimizers("AdamW", "native", monkeypatch)
    for opt in (ours, ref):
        for p in _params(opt):
            p.grad = torch.full_like(p, 64.0)
    grads = {id(opt): [p.grad for p in _params(opt)] for opt in (ours, ref)}
    before = {k: [g._version for g in v] for k, v in grads.items()}
    ours.grad_scale, ours.found_inf = torch.tensor(256.0), torch.zeros(())
    ours.step(grad_mult=0.5)
    # GradScaler.unscale_'s own op, then the clip's in-place multiply
    torch._amp_foreach_non_finite_check_and_unscale_(grads[id(ref)], torch.zeros(1), torch.tensor(1 / 256.0))
    for g in grads[id(ref)]:
        g.mul_(0.5)
    ref.step()
    for opt in (ours, ref):
        assert [g._version - v for g, v in zip(grads[id(opt)], before[id(opt)])] == [1, 1, 1, 1], opt
    for p, q in zip(_params(ours), _params(ref)):
        torch.testing.assert_close(p, q)
    assert ours.fastopt_tier == "native"
