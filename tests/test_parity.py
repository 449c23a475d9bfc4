"""Per-parameter parity with the real mmcv 1.7.2 and mmengine 0.10.7 constructors.

For every model x optimizer x paramwise_cfg, fastopt and the reference build an
optimizer from the same config; each parameter's param group (every key except
``params``) must be equal, with equal value types, and when the reference
raises, fastopt must raise too.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any, Callable

import pytest
from torch import nn

import fastopt

from . import models as M
from .refs import (
    Tally,
    assert_same_error,
    mismatches,
    mmcv_runner,
    mmengine_build,
    outcome,
    quiet_mmengine_logger,
)

ZOO_MODELS = ["faster_rcnn_r50_fpn", "mask_rcnn_r101_fpn", "retinanet_r50_fpn",
              "cascade_mask_rcnn_swin_l", "mask2former_swin_l", "vitdet_h", "dino_swin_l",
              "mobilenet_v2_ssdlite"]

def _zoo_build(name: str) -> nn.Module:
    from fastopt.tools import zoo

    return zoo.build(name)


MODELS: dict[str, Callable[[], nn.Module]] = {
    **{name: (lambda name=name: _zoo_build(name)) for name in ZOO_MODELS},
    "mixed_norm": M.MixedNormNet,
    "shared": M.SharedNet,
    "frozen_stem": M.FrozenStemNet,
    "frozen_shared": M.FrozenSharedNet,
    "odd_names": M.OddNamesNet,
    "ddp_wrapped": lambda: M.DataParallelLike(M.MixedNormNet()),
}

OPTIMIZERS = {
    "sgd": dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4),
    "adamw": dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    "adam_nowd": dict(type="Adam", lr=3e-4),
    "sgd_int_lr": dict(type="SGD", lr=1, weight_decay=0),
}

SWIN_KEYS = {"absolute_pos_embed": dict(decay_mult=0.0),
             "relative_position_bias_table": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)}
PARAMWISE: dict[str, dict | None] = {
    "none": None,
    "empty": {},
    "norm0": dict(norm_decay_mult=0.0),
    "bias": dict(bias_lr_mult=2.0, bias_decay_mult=0.0),
    "all_decay": dict(norm_decay_mult=0.0, bias_decay_mult=0.5, dwconv_decay_mult=0.25),
    "flat": dict(flat_decay_mult=0.0, bias_lr_mult=2.0),
    "swin": dict(custom_keys=SWIN_KEYS),
    "overlap": dict(custom_keys={
        "backbone": dict(lr_mult=0.1),
        "backbone.layer1": dict(lr_mult=0.0, decay_mult=0.0),
        "layers.1": dict(lr_mult=0.5),
        "layers.11": dict(lr_mult=0.25),
        "bias": dict(decay_mult=0.0),
        "head": dict(lr_mult=10.0, decay_mult=2.0),
        ".bias": dict(lr_mult=3.0),
        "σ": dict(lr_mult=0.3),
    }, norm_decay_mult=0.0, bias_lr_mult=2.0),
    "empty_key": dict(custom_keys={"": dict(lr_mult=0.5), "neck": dict(lr_mult=2.0)}),
    "extras": dict(custom_keys={
        "backbone": dict(lr_mult=0.1, momentum=0.5),
        "embed": dict(lr=0.123, betas=(0.8, 0.9), decay_mult=0.0),
        "query": dict(lr_mult=1, weight_decay=0.0),
    }, bias_decay_mult=0.0),
    "lr_only_keys": dict(custom_keys={"backbone": dict(lr_mult=0.1), "fc": dict(lr_mult=5)},
                         bias_lr_mult=2.0),
    "bypass": dict(bypass_duplicate=True, norm_decay_mult=0.0, bias_decay_mult=0.0),
    "dcn": dict(dcn_offset_lr_mult=0.1, bias_lr_mult=2.0, bypass_duplicate=True),
}
NEEDS_WD = {"norm0", "bias", "all_decay", "flat", "swin", "overlap", "extras", "bypass"}


def _cases() -> list[Any]:
    cases = []
    for m in MODELS:
        for o, ocfg in OPTIMIZERS.items():
            for p in PARAMWISE:
                if p in NEEDS_WD and "weight_decay" not in ocfg:
                    continue
                if o != "sgd" and m in ZOO_MODELS and p not in ("swin", "overlap", "extras"):
                    continue  # keep the matrix tractable; every model sees every cfg with SGD
                cases.append(pytest.param(m, o, p, id=f"{m}-{o}-{p}"))
    return cases


def _run(build: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return build(), None
        except Exception as exc:  # the reference's own failure modes
            return None, exc


def _names(model: nn.Module) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), name)
    return out


def _check(ref: Any, ref_exc: BaseException | None, fast: Any, fast_exc: BaseException | None,
           model: nn.Module) -> None:
    if ref_exc is not None:
        assert fast_exc is not None, f"reference raised {ref_exc!r}; fastopt built an optimizer"
        assert_same_error(ref_exc, fast_exc)
        return
    assert fast_exc is None, f"fastopt raised {fast_exc!r}; the reference built an optimizer"
    ref_opt = getattr(ref, "optimizer", ref)
    fast_opt = getattr(fast, "optimizer", fast)
    assert isinstance(fast, type(ref)), (type(fast), type(ref))
    assert isinstance(fast_opt, type(ref_opt))
    bad = mismatches(ref_opt, fast_opt, _names(model))
    assert not bad, f"{len(bad)} mismatching parameters:\n" + "\n".join(bad[:20])
    assert len(fast_opt.param_groups) <= len(ref_opt.param_groups)


@pytest.mark.parametrize(("model_name", "opt_name", "pw_name"), _cases())
def test_mmengine_parity(model_name: str, opt_name: str, pw_name: str) -> None:
    build_ref = mmengine_build()
    quiet_mmengine_logger()
    model = MODELS[model_name]()
    cfg = dict(optimizer=copy.deepcopy(OPTIMIZERS[opt_name]))
    if PARAMWISE[pw_name] is not None:
        cfg["paramwise_cfg"] = copy.deepcopy(PARAMWISE[pw_name])
    before = copy.deepcopy(cfg)
    ref, ref_exc = _run(lambda: build_ref(model, copy.deepcopy(cfg)))
    fast, fast_exc = _run(lambda: fastopt.build_optim_wrapper(model, cfg))
    assert cfg == before, "build_optim_wrapper mutated its cfg"
    _check(ref, ref_exc, fast, fast_exc, model)


@pytest.mark.parametrize(("model_name", "opt_name", "pw_name"), _cases())
def test_mmcv_parity(model_name: str, opt_name: str, pw_name: str) -> None:
    runner = mmcv_runner()
    model = MODELS[model_name]()
    cfg = copy.deepcopy(OPTIMIZERS[opt_name])
    if PARAMWISE[pw_name] is not None:
        cfg["paramwise_cfg"] = copy.deepcopy(PARAMWISE[pw_name])
    before = copy.deepcopy(cfg)
    ref, ref_exc = _run(lambda: runner.build_optimizer(model, copy.deepcopy(cfg)))
    fast, fast_exc = _run(lambda: fastopt.build_optimizer(model, cfg))
    assert cfg == before, "build_optimizer mutated its cfg"
    _check(ref, ref_exc, fast, fast_exc, model)


def test_parity_suite_is_not_vacuous() -> None:
    """The matrix holds configs where the references raise and where they build, and every
    paramwise_cfg except ``none``/``empty`` gives some model's parameters different
    hyperparameters in both references (run here on the small models of the matrix)."""
    build_ref, runner = mmengine_build(), mmcv_runner()
    quiet_mmengine_logger()
    small = [m for m in MODELS if m not in ZOO_MODELS]
    builders = {"mmengine": lambda m, o, p: build_ref(m, dict(optimizer=o, paramwise_cfg=p)),
                "mmcv": lambda m, o, p: runner.build_optimizer(m, dict(o, paramwise_cfg=p))}
    for api, build in builders.items():
        by_cfg: dict[str, Tally] = {p: Tally(p) for p in PARAMWISE}
        for case in _cases():
            m, o, p = case.values
            if m in small and PARAMWISE[p] is not None:
                args = (MODELS[m](), copy.deepcopy(OPTIMIZERS[o]), copy.deepcopy(PARAMWISE[p]))
                by_cfg[p].record(*outcome(functools.partial(build, *args)))
        raised = sum(t.counts["raised"] for t in by_cfg.values())
        built = sum(t.counts["split"] + t.counts["one setting"] for t in by_cfg.values())
        assert raised and built, f"{api}: {raised} cases raise, {built} build"
        idle = [p for p, t in by_cfg.items()
                if p != "empty" and PARAMWISE[p] is not None and not t.counts["split"]]
        assert not idle, f"{api}: these paramwise configs split no model's parameters: {idle}"
