"""fastopt's commands and builders on real OpenMMLab 2.x configs and models (mmdet 3.3.0,
mmpretrain 1.2.0), against mmengine 0.10.7's own build_optim_wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import fastopt
from fastopt.tools import cli, sources

from .conftest import shipped

SWIN_MASK_RCNN = ("mmdet", "swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py")
CONFIGS = [
    SWIN_MASK_RCNN,  # custom_keys decay_mult
    ("mmdet", "dino/dino-4scale_r50_8xb2-12e_coco.py"),  # custom_keys lr_mult, clip_grad
    ("mmdet", "dino/dino-5scale_swin-l_8xb2-12e_coco.py"),  # edits its sub-configs while it builds
    ("mmdet", "convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py"),  # mmdet's layer decay, AMP
    ("mmdet", "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py"),  # bias_lr_mult, frozen BN
    ("mmdet", "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"),  # no paramwise_cfg: one group
    ("mmpretrain", "byol/byol_resnet50_16xb256-coslr-200e_in1k.py"),  # mmpretrain's LARS
    ("mmpretrain", "resnet/resnet50_8xb256-rsb-a1-600e_in1k.py"),  # mmpretrain's Lamb
    ("mmpretrain", "swin_transformer/swin-tiny_16xb64_in1k.py"),  # flat/norm/bias rules, custom_keys
]


def test_the_stand_ins_agree_with_fastopt_about_dcn() -> None:
    from mmengine.utils.dl_utils import mmcv_full_available

    from fastopt._walk import dcn_types

    assert mmcv_full_available() is False and dcn_types() == ()


@pytest.mark.parametrize("package, relative", CONFIGS, ids=[c[1].split("/")[-1] for c in CONFIGS])
def test_check_reports_exact_parity(package: str, relative: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = shipped(package, relative)
    assert cli.main(["check", path, "--json"]) == 0, capsys.readouterr()
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is True and report["raised"] is None and report["differences"] == []
    assert report["reference"] == "mmengine==0.10.7" and report["params"] > 50
    if "faster_rcnn" in relative:  # no paramwise_cfg: one group on both sides
        assert report["groups_fastopt"] == report["groups_reference"] == 1
    elif "convnext" in relative:  # layer decay: one group per layer and decay kind already
        assert report["groups_fastopt"] == report["groups_reference"]
    else:
        assert report["groups_fastopt"] < report["groups_reference"]


def test_check_prints_a_readable_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    path = "mmdet::" + SWIN_MASK_RCNN[1]  # a config the package ships, by its name there
    assert cli.main(["check", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == path
    assert out[1].startswith("  EXACT PARITY: fastopt vs mmengine==0.10.7 (mmengine semantics")
    assert out[2] == "  param groups: 219 -> 2"


def test_host_optimizers_build_and_step_like_mmengine() -> None:
    """LARS (mmpretrain's registration) through fastopt: groups merged, same updates."""
    from mmengine.optim import build_optim_wrapper

    source = sources.resolve(shipped("mmpretrain", "byol/byol_resnet50_16xb256-coslr-200e_in1k.py"))
    _, cfg, _ = source.optim
    model = source.build("cpu")
    reference = build_optim_wrapper(model, cfg)
    fast = fastopt.build_optim_wrapper(model, cfg)
    assert type(fast.optimizer) is type(reference.optimizer)
    assert type(fast.optimizer).__module__.startswith("mmpretrain")
    assert len(fast.optimizer.param_groups) == 2 < len(reference.optimizer.param_groups)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    results = []
    for wrapper in (reference, fast):
        for p, s in zip(params, start):
            p.data.copy_(s)
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            wrapper.step()
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_every_command_takes_a_real_config(capsys: pytest.CaptureFixture[str]) -> None:
    path = shipped(*SWIN_MASK_RCNN)
    assert cli.main(["explain", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["groups"]) == 2 and len(out["params"]) == 219
    assert cli.main(["profile", path, "--max-groups", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == 2
    assert cli.main(["profile", path, "--max-groups", "1"]) == 1
    assert "LIMIT EXCEEDED: 2 groups > --max-groups 1" in capsys.readouterr().err
    options = ["--cfg-options", "optim_wrapper.paramwise_cfg.custom_keys.norm.decay_mult=0.5"]
    assert cli.main(["explain", path, "--json", *options]) == 0
    assert len(json.loads(capsys.readouterr().out)["groups"]) == 3


@pytest.mark.parametrize("source", ["timm:resnet18", "torchvision:resnet18", "retinanet_r50_fpn"])
def test_model_names_check_with_the_default_recipe(source: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", source, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is True and report["groups_fastopt"] < report["groups_reference"]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("default_scope = 'mmfoo'\nmodel = dict(type='X')\noptim_wrapper = dict(optimizer=dict(type='SGD'))",
     "the config's scope 'mmfoo' needs the 'mmfoo' package, which is not installed"),
    ("default_scope = 'mmdet'\nmodel = dict(type='NoSuchDetector')\n"
     "optim_wrapper = dict(optimizer=dict(type='SGD'))",
     "model type 'NoSuchDetector' is not registered under scope 'mmdet'"),
    ("default_scope = 'mmdet'\noptim_wrapper = dict(optimizer=dict(type='SGD'))", "has no `model=` entry"),
])
def test_model_source_errors(tmp_path: Path, text: str, message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", _config(tmp_path, text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_project_config_inheriting_from_a_package(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A downstream project's config: ``_base_`` from mmdet's shipped configs (mmengine marks the
    inherited dicts with ``_scope_='mmdet'``), its own overrides."""
    path = _config(tmp_path, "_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'\n"
                             "optim_wrapper = dict(paramwise_cfg=dict(\n"
                             "    custom_keys=dict(backbone=dict(lr_mult=0.1))))\n")
    assert sources.resolve(path).optim[1]["_scope_"] == "mmdet"
    assert cli.main(["check", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is True and report["groups_fastopt"] == 3


def test_a_2x_config_needs_mmcv_1x(capsys: pytest.CaptureFixture[str]) -> None:
    path = shipped(*SWIN_MASK_RCNN)
    options = ["--cfg-options", "optim_wrapper=None", "optimizer.type=SGD", "optimizer.lr=0.01"]
    assert cli.main(["check", path, *options]) == 2
    assert "mmcv 1.x, which is not installed (mmcv 2.1.0 is)" in capsys.readouterr().err


def test_load_model_never_loads_pretrained_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a checkpoint was requested")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    import mmengine.runner.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "CheckpointLoader", None)
    model = fastopt.load_model(shipped(*SWIN_MASK_RCNN))
    assert sum(1 for _ in model.parameters()) == 219


def test_a_model_that_needs_a_process_group_builds(capsys: pytest.CaptureFixture[str]) -> None:
    """mmcv's SyncBN asks for the world size while it builds: a one-process group is started for
    the build, said on stderr, and destroyed after it."""
    source = "mmdet::strong_baselines/mask-rcnn_r50_fpn_rpn-2conv_4conv1fc_syncbn-all_lsj-100e_coco.py"
    assert cli.main(["check", source, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["parity"] is True and report["params"] == 225
    assert "one-process gloo group" in captured.err
    assert not torch.distributed.is_initialized()


def test_an_amp_config_is_profiled_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a GPU an AmpOptimWrapper config is profiled with OptimWrapper, and says so."""
    source = "mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py"
    assert cli.main(["profile", source, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["groups"] == 16
    note = "AmpOptimWrapper needs a CUDA device: built with OptimWrapper instead"
    assert (note in captured.err) is (not torch.cuda.is_available())


def test_bench_a_real_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fastopt bench on a shipped config (SGD, no paramwise_cfg: one group on every side)."""
    out = tmp_path / "bench.json"
    source = "mmpretrain::resnet/resnet18_8xb16_cifar10.py"
    assert cli.main(["bench", source, "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == source and report["kind"] == "config" and report["device"] == "cpu"
    assert report["optimizer"].lower() == "sgd" and report["tensors"] == 62
    impls = {r["impl"]: r for r in report["results"]}
    assert {"fastopt", "mmengine", "mmengine+fused"} <= set(impls)
    assert impls["fastopt"]["groups"] == impls["mmengine"]["groups"] == 1
    assert all(r["step_s"] > 0 for r in report["results"])
