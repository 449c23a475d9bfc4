"""Checkpoints move between the reference's per-parameter layout and fastopt's merged groups."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import fastopt

from .models import FrozenStemNet
from .refs import mmcv_runner, mmengine_build, quiet_mmengine_logger

PW = dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={"bbox_head": dict(lr_mult=0.1)})


def _grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) if p.requires_grad else None


def _builders(api: str) -> tuple:
    if api == "mmengine":
        build = mmengine_build()
        quiet_mmengine_logger()
        cfg = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05), paramwise_cfg=PW)
        return (lambda m: build(m, copy.deepcopy(cfg)).optimizer,
                lambda m: fastopt.build_optim_wrapper(m, copy.deepcopy(cfg)).optimizer)
    runner = mmcv_runner()
    cfg = dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4, paramwise_cfg=PW)
    return (lambda m: runner.build_optimizer(m, copy.deepcopy(cfg)),
            lambda m: fastopt.build_optimizer(m, copy.deepcopy(cfg)))


@pytest.mark.parametrize("api", ["mmengine", "mmcv"])
def test_resume_reference_checkpoint_in_fastopt_and_back(api: str) -> None:
    ref_build, fast_build = _builders(api)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = FrozenStemNet()
        ref = ref_build(a)
        for step in range(3):  # train with the reference, then "save"
            _grads(a, step)
            ref.step()
        saved = copy.deepcopy(ref.state_dict())
        b = copy.deepcopy(a)
        fast = fast_build(b)
    assert len(fast.param_groups) < len(saved["param_groups"])
    fast.load_state_dict(saved)  # the per-parameter layout is recognised
    for model, opt in ((a, ref), (b, fast)):
        _grads(model, 99)
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

    # ... and back: fastopt's state in the reference layout, loaded by the reference optimizer.
    back = fastopt.per_param_state_dict(fast)
    assert len(back["param_groups"]) == len(saved["param_groups"])
    c = copy.deepcopy(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref2 = ref_build(c)
    ref2.load_state_dict(copy.deepcopy(back))  # (as torch.save/torch.load would: no shared tensors)
    for model, opt in ((b, fast), (c, ref2)):
        _grads(model, 7)
        opt.step()
    for p, q in zip(b.parameters(), c.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_mismatched_layout_is_a_clear_error() -> None:
    cfg = dict(type="SGD", lr=0.1, weight_decay=1e-4, paramwise_cfg=PW)
    opt = fastopt.build_optimizer(FrozenStemNet(), cfg)
    bad = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}, {"lr": 0.1, "params": [1]}]}
    with pytest.raises(ValueError, match="one group per parameter"):
        fastopt.load_per_param_state_dict(opt, bad)


@pytest.mark.parametrize("api", ["mmengine", "mmcv"])
def test_scheduler_state_moves_between_layouts(api: str) -> None:
    """A torch LR scheduler's per-group lists (base_lrs, _last_lr) saved against the reference
    groups, taken onto the merged groups: every parameter's scheduled lr goes on as with the
    reference; and written back for the reference layout, they are the reference's own."""
    ref_build, fast_build = _builders(api)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = FrozenStemNet()
        ref = ref_build(a)
        b = copy.deepcopy(a)
        fast = fast_build(b)

    def cosine(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        # warm-up then restarts: the child schedulers' states nest under ``_schedulers``
        sched = torch.optim.lr_scheduler
        return sched.SequentialLR(opt, [sched.LinearLR(opt, 0.1, total_iters=2),
                                        sched.CosineAnnealingWarmRestarts(opt, T_0=3, eta_min=1e-5)],
                                  milestones=[2])

    ref_sched = cosine(ref)
    for _ in range(4):
        ref.step()
        ref_sched.step()
    fast_sched = cosine(fast)  # built first, as a resuming run builds it, then both states load
    fast.load_state_dict(ref.state_dict())
    saved = ref_sched.state_dict()
    merged = fastopt.merged_scheduler_state(fast, saved)
    assert len(merged["_last_lr"]) == len(fast.param_groups) < len(saved["_last_lr"])
    for child in merged["_schedulers"]:
        assert len(child["base_lrs"]) == len(fast.param_groups)
    fast_sched.load_state_dict(merged)
    names = {id(p): n for n, p in b.named_parameters()}
    for _ in range(4):
        for opt, sched in ((ref, ref_sched), (fast, fast_sched)):
            opt.step()
            sched.step()
        lrs = {names[id(p)]: g["lr"] for g in fast.param_groups for p in g["params"]}
        ref_names = {id(p): n for n, p in a.named_parameters()}
        want = {ref_names[id(p)]: g["lr"] for g in ref.param_groups for p in g["params"]}
        assert lrs == {n: want[n] for n in lrs}
    back = fastopt.per_param_scheduler_state(fast, fast_sched.state_dict())
    theirs = ref_sched.state_dict()
    assert back["_last_lr"] == theirs["_last_lr"]
    assert [c["base_lrs"] for c in back["_schedulers"]] == [c["base_lrs"] for c in theirs["_schedulers"]]
    assert fastopt.merged_scheduler_state(fast, fast_sched.state_dict()) == fast_sched.state_dict()
