"""LR schedules drive fastopt's merged groups exactly as they drive the reference optimizers."""

from __future__ import annotations

import copy
import json
import textwrap
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import fastopt
from fastopt.tools import cli
from fastopt.tools.schedule import lr_curve, simulate

from .models import MixedNormNet
from .refs import mmcv_runner, mmengine_build, quiet_mmengine_logger

PW = dict(norm_decay_mult=0.0, bias_lr_mult=2.0,
          custom_keys={"head": dict(lr_mult=0.1), "stem": dict(lr_mult=0.5)})

ENGINE = {
    "warmup+multistep": [dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=7),
                         dict(type="MultiStepLR", milestones=[2, 3], gamma=0.1, by_epoch=True)],
    "cosine-iter": [dict(type="CosineAnnealingLR", T_max=4, eta_min=1e-5, by_epoch=True,
                         convert_to_iter_based=True)],
    "poly": [dict(type="PolyLR", power=0.9, eta_min=1e-4, by_epoch=False, begin=0, end=40)],
    "exp": [dict(type="ExponentialLR", gamma=0.8, by_epoch=True)],
    "warmup+cosine": [dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=8),
                      dict(type="CosineAnnealingLR", T_max=4, by_epoch=True, begin=0, end=4)],
}
MMCV = {
    "step+linear-warmup": dict(policy="step", warmup="linear", warmup_iters=7, warmup_ratio=0.001,
                               step=[2, 3]),
    "cosine+exp-warmup": dict(policy="CosineAnnealing", min_lr_ratio=0.01, warmup="exp", warmup_iters=5,
                              warmup_ratio=0.1),
    "poly+constant-warmup": dict(policy="poly", power=0.9, min_lr=1e-4, by_epoch=False, warmup="constant",
                                 warmup_iters=6, warmup_ratio=0.1),
    "exp-by-iter": dict(policy="exp", gamma=0.95, by_epoch=False),
    "step-by-epoch-warmup": dict(policy="step", step=3, gamma=0.5, warmup="linear", warmup_iters=1,
                                 warmup_by_epoch=True, warmup_ratio=0.2),
}


def _trace(optimizer: torch.optim.Optimizer, cfg: dict, params: list) -> list[list[float]]:
    """Per-parameter lr at every iteration."""
    rows: list[list[float]] = []

    def record(_: int, opt: torch.optim.Optimizer) -> None:
        lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        rows.append([lr[id(p)] for p in params])

    simulate(optimizer, cfg, iters_per_epoch=10, max_epochs=4, on_iter=record)
    return rows


def _compare(build_ref: Callable[[], Any], build_fast: Callable[[], Any], sched: dict, params: list) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, fast = build_ref(), build_fast()
        assert len(fast.param_groups) < len(ref.param_groups)
        want, got = _trace(ref, sched, params), _trace(fast, sched, params)
    assert len(got) == 40
    assert got == want  # exactly: the same scheduler code on equal group lrs
    assert len({tuple(r) for r in got}) > 3  # the schedule really moved the lrs


@pytest.mark.parametrize("name", list(ENGINE))
def test_mmengine_param_schedulers(name: str) -> None:
    build = mmengine_build()
    quiet_mmengine_logger()
    model = MixedNormNet()
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4), paramwise_cfg=PW)
    params = [p for p in model.parameters() if p.requires_grad]
    _compare(lambda: build(model, copy.deepcopy(cfg)).optimizer,
             lambda: fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer,
             dict(param_scheduler=ENGINE[name]), params)


@pytest.mark.parametrize("name", list(MMCV))
def test_mmcv_lr_config(name: str) -> None:
    runner = mmcv_runner()
    model = MixedNormNet()
    cfg = dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4, paramwise_cfg=PW)
    _compare(lambda: runner.build_optimizer(model, copy.deepcopy(cfg)),
             lambda: fastopt.build_optimizer(model, copy.deepcopy(cfg)),
             dict(lr_config=MMCV[name]), list(model.parameters()))


def test_retinanet_schedule_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented RetinaNet schedule: 500-iteration linear warm-up from 0.001x, x0.1 at epochs 8, 11."""
    pytest.importorskip("mmcv")
    config = tmp_path / "retinanet.py"
    config.write_text(textwrap.dedent("""
        optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001)
        lr_config = dict(policy='step', warmup='linear', warmup_iters=500, warmup_ratio=0.001, step=[8, 11])
        runner = dict(type='EpochBasedRunner', max_epochs=12)
    """))
    out_png, out_json = tmp_path / "lr.png", tmp_path / "lr.json"
    assert cli.main(["lr-curve", str(config), "--iters-per-epoch", "1000", "--out", str(out_png),
                     "--json", str(out_json)]) == 0
    lrs = json.loads(out_json.read_text())["lr"]
    assert out_png.stat().st_size > 10_000
    assert len(lrs) == 12_000
    assert lrs[0] == pytest.approx(1e-5) and lrs[499] < 0.01 and lrs[500] == pytest.approx(0.01)
    assert lrs[7999] == pytest.approx(0.01) and lrs[8000] == pytest.approx(0.001)
    assert lrs[11000] == pytest.approx(0.0001)
    assert lrs == lr_curve(dict(optimizer=dict(lr=0.01), lr_config=dict(
        policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001, step=[8, 11])), 1000, 12)
    capsys.readouterr()
