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
