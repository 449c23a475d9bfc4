"""Model sources, host registrations and ``fastopt check`` in the main test environment (mmengine
0.10.7 and mmcv 1.7.2 as references; the OpenMMLab model libraries are tested in tests/host/)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fastopt
from fastopt.tools import check as check_mod
from fastopt.tools import cli, sources

from . import refs


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


class Net(nn.Module):
    """A small detector-like model: conv + BN backbone (stem frozen), a head with biases."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width),
                                      nn.Conv2d(width, width, 3))
        self.neck = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width, 2)
        self.backbone[0].weight.requires_grad_(False)


def net(width: int = 4) -> nn.Module:
    """Builder the configs below name as ``tests.test_sources:net``."""
    return Net(width)


CFG3 = """
    model = dict(type='tests.test_sources:net', width=4)
    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                           custom_keys={'backbone': dict(lr_mult=0.1)}),
        clip_grad=dict(max_norm=0.1, norm_type=2))
"""

CFG2 = """
    model = 'tests.test_sources:net'
    optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
                     paramwise_cfg=dict(bias_lr_mult=2.0, bias_decay_mult=0.0, norm_decay_mult=0.0))
    optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))
"""


# ------------------------------------------------------------------ resolving
def test_every_kind_of_source_resolves(tmp_path: Path) -> None:
    cfg3 = _write(tmp_path, "three.py", CFG3)
    src = sources.resolve(cfg3)
    assert (src.kind, src.api) == ("config", "mmengine")
    assert src.optim[2] == dict(max_norm=0.1, norm_type=2)
    model = src.build()
    assert isinstance(model, Net) and next(model.parameters()).is_meta  # no memory, no init
    assert not next(src.build("cpu").parameters()).is_meta
    two = sources.resolve(_write(tmp_path, "two.py", CFG2))
    assert two.api == "mmcv" and two.optim[2] == dict(max_norm=35, norm_type=2)
    assert sources.resolve("tests.test_sources:net").kind == "callable"
    zoo = sources.resolve("retinanet_r50_fpn")
    assert zoo.kind == "zoo" and zoo.optim[1]["optimizer"]["type"] == "SGD"
    assert isinstance(fastopt.load_model("tests.test_sources:net"), Net)


def test_cfg_options_override_the_config(tmp_path: Path) -> None:
    cfg3 = _write(tmp_path, "three.py", CFG3)
    options = sources.parse_cfg_options(["optim_wrapper.optimizer.lr=0.5", "optim_wrapper.paramwise_cfg."
                                         "custom_keys.backbone.lr_mult=0.25", "model.width=8"])
    src = sources.resolve(cfg3, options)
    _, cfg, _ = src.optim
    assert cfg["optimizer"]["lr"] == 0.5
    assert cfg["paramwise_cfg"]["custom_keys"]["backbone"]["lr_mult"] == 0.25
    assert src.build("cpu").head.in_features == 8
    assert sources.parse_cfg_options(["a=[1,2]", "b=None", "c=x", "d=1e-3"]) == \
        {"a": [1, 2], "b": None, "c": "x", "d": 1e-3}
    with pytest.raises(sources.SourceError, match="key=value"):
        sources.parse_cfg_options(["lr"])
    # a model-only source gets the default recipe, which --cfg-options edits the same way
    src = sources.resolve("tests.test_sources:net", {"optim_wrapper.optimizer.type": "SGD"})
    assert src.optim[1]["optimizer"]["type"] == "SGD"
    assert src.optim[1]["paramwise_cfg"] == sources.DEFAULT_OPTIM_WRAPPER["paramwise_cfg"]


def test_pretrained_weights_are_switched_off() -> None:
    cfg = {"type": "X", "pretrained": "torchvision://resnet50",
           "backbone": {"type": "B", "init_cfg": {"type": "Pretrained", "checkpoint": "x.pth"}},
           "heads": [{"pretrained": True}], "neck": {"init_cfg": {"type": "Xavier"}}}
    out = sources._no_pretrained(cfg)  # checked directly: no host model
    assert out["pretrained"] is None and out["backbone"]["init_cfg"] is None
    assert out["heads"][0]["pretrained"] is False and out["neck"]["init_cfg"] == {"type": "Xavier"}
    assert cfg["pretrained"] == "torchvision://resnet50"  # the input is not modified


@pytest.mark.parametrize("text, message", [
    ("optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))", "has no `model=` entry"),
    ("model = dict(type='Net')\noptim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))",
     "names no scope"),
    ("default_scope = 'mmdet3d'\nmodel = dict(type='VoxelNet')\n"
     "optim_wrapper = dict(optimizer=dict(type='SGD'))",
     "needs the 'mmdet3d' package, which is not installed"),
    ("model = dict(type='fastopt_nothere.Net')\noptim_wrapper = dict(optimizer=dict(type='SGD'))",
     "needs the 'fastopt_nothere' package"),
    ("model = 'tests.test_sources:net'", "neither `optim_wrapper=`"),
    ("model = 'tests.test_sources:nope'\noptim_wrapper = dict(optimizer=dict(type='SGD'))",
     "has no attribute 'nope'"),
])
def test_source_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               text: str, message: str) -> None:
    path = _write(tmp_path, "bad.py", text)
    for command in ("check", "explain", "profile"):
        assert cli.main([command, path]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"fastopt {command}: error: ") and message in err[0], err


def test_missing_files_and_unknown_sources_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(tmp_path / "nope.py")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert cli.main(["explain", "torchvision:not_a_model"]) == 2
    assert "torchvision:not_a_model" in capsys.readouterr().err
    assert cli.main(["check", "fastopt_nothere.mod:fn"]) == 2
    assert "cannot import 'fastopt_nothere.mod'" in capsys.readouterr().err


# ------------------------------------------------------------------ check
def test_check_3x_config_against_mmengine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs.mmengine_build()
    path = _write(tmp_path, "three.py", CFG3)
    assert cli.main(["check", path]) == 0
    out = capsys.readouterr().out
    assert "EXACT PARITY: fastopt vs mmengine==0.10.7" in out and "param groups: 9 -> 3" in out
    assert cli.main(["check", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is True and report["api"] == "mmengine"
    assert report["groups_reference"] == 9 and report["groups_fastopt"] == 3
    assert report["params"] == 10 and report["differences"] == []


def test_check_2x_config_against_mmcv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs.mmcv_runner()
    path = _write(tmp_path, "two.py", CFG2)
    assert cli.main(["check", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is True and report["reference"] == "mmcv==1.7.2" and report["api"] == "mmcv"
    assert report["groups_reference"] == 10 and report["groups_fastopt"] == 3


def test_check_a_zoo_model_with_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs.mmengine_build()
    path = _write(tmp_path, "three.py", CFG3)
    assert cli.main(["check", path, "--model", "fcos_r50_caffe_fpn_gn", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is True and report["params"] == 210
    assert cli.main(["check", "mask2former_swin_l"]) == 0  # a zoo model with its own config


def test_check_reports_a_mismatch_with_both_values(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    refs.mmengine_build()
    real = fastopt.build_optim_wrapper

    def off_by_one_type(model: nn.Module, cfg: dict, **kwargs: Any) -> Any:
        wrapper = real(model, cfg, **kwargs)
        wrapper.optimizer.param_groups[-1]["weight_decay"] = 0  # an int where mmengine has 0.0
        return wrapper

    monkeypatch.setattr(check_mod.builder, "build_optim_wrapper", off_by_one_type)
    path = _write(tmp_path, "three.py", CFG3)
    assert cli.main(["check", path]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "weight_decay" in out and "0.0 (float)" in out and "0 (int)" in out
    assert cli.main(["check", path, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is False and report["num_differences"] >= 1
    assert {d["key"] for d in report["differences"]} == {"weight_decay"}


def test_a_class_difference_alone_counts_as_a_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Same hyperparameters for every parameter, another optimizer class: MISMATCH with one
    difference (never "MISMATCH (0 differences)")."""
    refs.mmengine_build()
    real = fastopt.build_optim_wrapper

    class Other(torch.optim.Optimizer):
        """Not a subclass of the reference's optimizer."""

    def other_class(model: nn.Module, cfg: dict, **kwargs: Any) -> Any:
        wrapper = real(model, cfg, **kwargs)
        wrapper.optimizer.__class__ = Other
        return wrapper

    monkeypatch.setattr(check_mod.builder, "build_optim_wrapper", other_class)
    path = _write(tmp_path, "three.py", CFG3)
    assert cli.main(["check", path, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["parity"] is False and report["num_differences"] == 1
    assert any("optimizer class" in note for note in report["notes"])


def needs_a_process_group(width: int = 4) -> nn.Module:
    """A builder that, like mmcv's SyncBN, asks for the world size while it builds."""
    if not torch.distributed.is_initialized():
        raise RuntimeError("Default process group has not been initialized, please make sure to call "
                           "init_process_group.")
    assert torch.distributed.get_world_size() == 1
    return Net(width)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_a_model_that_needs_a_process_group_gets_one_for_its_build_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    model = fastopt.load_model("tests.test_sources:needs_a_process_group", device="cpu")
    assert isinstance(model, Net)
    assert not torch.distributed.is_initialized()  # the group is gone with the build
    assert "one-process gloo group" in capsys.readouterr().err


def test_check_under_another_release_semantics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mmengine up to 0.10.3 keeps the frozen stem weight as a bare group; the installed 0.10.7
    leaves it out: checked against 0.10.7, only that parameter differs."""
    refs.mmengine_build()
    path = _write(tmp_path, "three.py", CFG3)
    assert cli.main(["check", path, "--semantics", "mmengine==0.10.4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["semantics"] == "mmengine==0.10.4"
    assert cli.main(["check", path, "--semantics", "mmengine==0.10.3", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["semantics"] == "mmengine==0.10.3"
    assert [(d["param"], d["key"], d["reference"], d["fastopt"]) for d in report["differences"]] == \
        [("backbone.0.weight", "<in a group>", "no", "yes")]
    assert cli.main(["check", path, "--semantics", "mmengine==9.9"]) == 2
    assert "--semantics" in capsys.readouterr().err


def test_check_when_both_raise_the_same_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs.mmengine_build()
    path = _write(tmp_path, "bad.py", """
        model = 'tests.test_sources:net'
        optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1), paramwise_cfg=dict(norm_decay_mult=0.0))
    """)
    assert cli.main(["check", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["raised"].startswith("ValueError")


# ------------------------------------------------------------------ host registrations
def _mmengine_registries() -> Any:
    refs.mmengine_build()
    from mmengine import registry
    from mmengine.optim import DefaultOptimWrapperConstructor

    return registry, DefaultOptimWrapperConstructor


def test_host_optimizers_and_constructors_resolve_through_mmengine() -> None:
    registry, MmengineDefault = _mmengine_registries()

    class HostSGD(torch.optim.SGD):
        pass

    class HalfHeadLr(MmengineDefault):  # overrides add_params, keeps __call__
        def add_params(self, params: list, module: nn.Module, prefix: str = "",
                       is_dcn_module: Any = None) -> None:
            for name, p in module.named_parameters():
                lr = self.base_lr * (0.5 if name.startswith("head") else 1.0)
                params.append({"params": [p], "lr": lr})

    class CallsItself(MmengineDefault):  # overrides __call__
        def __call__(self, model: nn.Module) -> Any:
            return super().__call__(model)

    registry.OPTIMIZERS.register_module(name="FastoptTestHostSGD", module=HostSGD, force=True)
    registry.OPTIM_WRAPPER_CONSTRUCTORS.register_module(name="FastoptTestHalfHeadLr", module=HalfHeadLr,
                                                        force=True)
    registry.OPTIM_WRAPPER_CONSTRUCTORS.register_module(name="FastoptTestCallsItself", module=CallsItself,
                                                        force=True)
    try:
        model = Net()
        for ctor in ("FastoptTestHalfHeadLr", "FastoptTestCallsItself"):
            for opt in ("FastoptTestHostSGD", "SGD"):
                cfg = dict(constructor=ctor, paramwise_cfg=dict(bias_decay_mult=0.0),
                           optimizer=dict(type=opt, lr=0.1, momentum=0.9, weight_decay=1e-4))
                report = check_mod.check(model, "mmengine", cfg)
                assert report.parity, (ctor, opt, report)
                wrapper = fastopt.build_optim_wrapper(model, cfg)
                assert len(wrapper.optimizer.param_groups) < report.groups_reference
                expected = HostSGD if opt != "SGD" else fastopt.optim.SGD
                assert type(wrapper.optimizer) is expected
    finally:
        for reg, name in ((registry.OPTIMIZERS, "FastoptTestHostSGD"),
                          (registry.OPTIM_WRAPPER_CONSTRUCTORS, "FastoptTestHalfHeadLr"),
                          (registry.OPTIM_WRAPPER_CONSTRUCTORS, "FastoptTestCallsItself")):
            reg.module_dict.pop(name, None)


def test_unknown_types_still_name_the_registry() -> None:
    with pytest.raises(KeyError, match="'NotAnOptimizer' is not registered in the 'optimizer' registry"):
        fastopt.build_optim_wrapper(Net(), dict(optimizer=dict(type="NotAnOptimizer", lr=0.1)))


def test_host_optimizer_builders_resolve_through_mmcv() -> None:
    runner = refs.mmcv_runner()

    class FastoptTestMmcvCtor(runner.DefaultOptimizerConstructor):
        def add_params(self, params: list, module: nn.Module, prefix: str = "",
                       is_dcn_module: Any = None) -> None:
            for name, p in module.named_parameters():
                params.append({"params": [p], "lr": self.base_lr * (2.0 if "bias" in name else 1.0)})

    runner.OPTIMIZER_BUILDERS.register_module(module=FastoptTestMmcvCtor, force=True)
    try:
        cfg = dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4, constructor="FastoptTestMmcvCtor",
                   paramwise_cfg=dict(bias_decay_mult=0.0))
        report = check_mod.check(Net(), "mmcv", cfg)
        assert report.parity and report.groups_fastopt == 2, report
    finally:
        runner.OPTIMIZER_BUILDERS.module_dict.pop("FastoptTestMmcvCtor", None)


@pytest.mark.parametrize("command", ["explain", "profile"])
def test_json_output_stays_json_when_the_build_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      command: str) -> None:
    """A config whose build warns (a frozen parameter mmengine leaves out, a custom key matching
    nothing): with mmengine installed those go to its logger, whose console handler writes to
    stdout; the commands hold them back, so --json prints JSON only."""
    refs.mmengine_build()
    cfg = CFG3.replace("custom_keys={'backbone': dict(lr_mult=0.1)}",
                       "custom_keys={'backbone': dict(lr_mult=0.1), 'nosuch': dict(lr_mult=0.5)}")
    assert cfg != CFG3
    path = _write(tmp_path, "warns.py", cfg)
    assert cli.main([command, path, "--json"]) == 0
    json.loads(capsys.readouterr().out)
