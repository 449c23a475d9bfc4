"""`fastopt bench` on any model source and on either device: the device choice, config files
with their own model and optimizer config, bundled models by name, and CUDA runs (skipped
without a GPU)."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from fastopt.tools import bench, cli, sources
from fastopt.tools.check import installed_reference

MODULE = '''
from torch import nn


def build(channels=8):
    """A small conv net: conv, BN, depthwise conv, GN, linear."""
    return nn.Sequential(nn.Conv2d(3, channels, 3), nn.BatchNorm2d(channels),
                         nn.Conv2d(channels, channels, 3, groups=channels), nn.GroupNorm(2, channels),
                         nn.Flatten(), nn.Linear(channels, 10))
'''

ENGINE_CONFIG = """
model = dict(type='benchnet:build', channels=16)
optim_wrapper = dict(
    type='AmpOptimWrapper', clip_grad=dict(max_norm=1.0),
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={'0.': dict(lr_mult=0.1)}))
"""

MMCV_CONFIG = """
model = 'benchnet:build'
optimizer = dict(type='SGD', lr=0.01, weight_decay=1e-4,
                 paramwise_cfg=dict(norm_decay_mult=0.0, dwconv_decay_mult=0.0))
"""

#: sources named on the command line: a bundled model, a callable (both always), timm's ResNet-18
#: where timm is installed
SOURCES = ["retinanet_r50_fpn", "fastopt.tools.zoo.catalogue:mobilenet_v2_ssdlite"] + (
    ["timm:resnet18"] if importlib.util.find_spec("timm") else [])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path with the model module importable and both configs written."""
    (tmp_path / "benchnet.py").write_text(MODULE)
    (tmp_path / "engine_cfg.py").write_text(textwrap.dedent(ENGINE_CONFIG))
    (tmp_path / "mmcv_cfg.py").write_text(textwrap.dedent(MMCV_CONFIG))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def check_report(data: dict[str, Any], device: str = "cpu") -> dict[str, dict[str, Any]]:
    """The layout every `bench --json` report shares; returns its rows by implementation."""
    assert {"model", "kind", "api", "device", "optimizer", "width", "tensors", "numel", "repeats", "machine",
            "results"} <= data.keys()
    assert data["device"] == device
    assert {"cpu", "cores", "torch", "fastopt_kernels"} <= data["machine"].keys()
    assert data["machine"]["torch"] == torch.__version__
    impls = {r["impl"]: r for r in data["results"]}
    expected = {"fastopt", "torch flat limit"} | ({"fastopt flat"} if device == "cpu" else set())
    if installed_reference("mmengine") is not None:
        expected |= {"mmengine", "mmengine+fused"}
    if installed_reference("mmcv") is not None:
        expected.add("mmcv")
    assert set(impls) == expected
    for r in data["results"]:
        assert r["step_s"] > 0 and r["groups"] >= 1
    assert impls["fastopt"]["groups"] < data["tensors"]
    return impls


def test_auto_picks_cuda_only_where_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.select_device("auto") == torch.device("cpu")
    assert bench.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench.select_device("auto") == torch.device("cuda")
    assert bench.select_device("cuda") == torch.device("cuda")
    assert bench.select_device("cpu") == torch.device("cpu")
    with pytest.raises(sources.SourceError, match="auto, cpu or cuda"):
        bench.select_device("tpu")


def test_cuda_without_a_gpu_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(capsys, "bench", "retinanet_r50_fpn", "--device", "cuda", "--repeats", "1")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1  # nothing was built: no progress lines either
    assert "--device cuda: no CUDA device" in err


def test_bench_a_config_file_with_its_own_model_and_optimizer(config_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An mmengine config: its model callable is built on the CPU (never left on meta) and its
    optimizer and paramwise_cfg are what every implementation gets."""
    built_on: list[str] = []
    original = sources.Source.build

    def recording(self: sources.Source, device: str = "auto") -> torch.nn.Module:
        built_on.append(device)
        return original(self, device)

    monkeypatch.setattr(sources.Source, "build", recording)
    path = tmp_path / "bench.json"
    config = str(config_dir / "engine_cfg.py")
    code, out, _ = run(capsys, "bench", config, "--device", "cpu", "--repeats", "1", "--json", str(path))
    data = json.loads(path.read_text())
    assert code == 0 and built_on == ["cpu"]
    assert f"{config}: 10 tensors" in out and "machine:" in out
    impls = check_report(data)
    assert data["model"] == config and data["kind"] == "config" and data["api"] == "mmengine"
    assert data["optimizer"] == "adamw" and data["width"] is None and data["tensors"] == 10
    # lr 1e-5 (the custom key), weight decay 0 (norms and biases), the rest
    assert impls["fastopt"]["groups"] == 3
    assert impls["torch flat limit"]["construct_s"] is None


def test_bench_an_mmcv_config_with_cfg_options(config_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    code, _, _ = run(capsys, "bench", str(config_dir / "mmcv_cfg.py"), "--device", "cpu", "--repeats", "1",
                     "--json", str(path),
                     "--cfg-options", "optimizer.type=AdamW", "optimizer.lr=0.001")
    data = json.loads(path.read_text())
    assert code == 0
    check_report(data)
    assert data["api"] == "mmcv" and data["optimizer"] == "adamw"  # the option replaced SGD


def test_bench_the_phase_of_a_config_file(config_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "phase.json"
    code, out, _ = run(capsys, "bench", str(config_dir / "engine_cfg.py"), "--device", "cpu",
                       "--repeats", "1", "--clip", "1.0", "--json", str(path))
    data = json.loads(path.read_text())
    assert code == 0 and "clip_grad max_norm 1.0" in out
    assert data["device"] == "cpu" and data["kind"] == "config" and data["width"] is None
    assert {"fastopt step", "fastopt phase", "fastopt + torch clip", "flat limit"} <= {
        r["impl"] for r in data["results"]}
    assert all(r["phase_s"] > 0 for r in data["results"])


def test_a_reference_without_the_configs_constructor_is_left_out(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """fastopt knows mmdet's layer-decay constructor; mmengine and mmcv alone do not."""
    config = tmp_path / "vitdet.py"
    config.write_text(textwrap.dedent("""
        model = dict(type='fastopt.tools.zoo:build', name='vitdet_h', depth=2, width=0.05)
        optim_wrapper = dict(
            constructor='LayerDecayOptimizerConstructor',
            paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=2),
            optimizer=dict(type='AdamW', lr=0.0001, weight_decay=0.1))
    """))
    path = tmp_path / "bench.json"
    code, _, err = run(capsys, "bench", str(config), "--device", "cpu", "--repeats", "1", "--json", str(path))
    data = json.loads(path.read_text())
    assert code == 0 and "mmengine cannot build this config" in err
    assert {r["impl"] for r in data["results"]} == {"fastopt", "fastopt flat", "torch flat limit"}


@pytest.mark.parametrize("source", SOURCES)
def test_bench_a_model_source_by_name(source: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    zoo_name = ":" not in source
    width = ["--width", "0.05"] if zoo_name else []
    code, _, _ = run(capsys, "bench", source, *width, "--device", "cpu", "--repeats", "1",
                     "--json", str(path))
    data = json.loads(path.read_text())
    assert code == 0
    check_report(data)
    assert data["model"] == source and data["optimizer"] == "adamw"
    if zoo_name:  # a bundled model keeps its paramwise_cfg and gets AdamW, as with --model
        assert data["kind"] == "zoo" and data["width"] == 0.05
    else:  # a model alone gets sources.DEFAULT_OPTIM_WRAPPER
        assert data["kind"] == source.partition(":")[0].replace("fastopt.tools.zoo.catalogue", "callable")
        assert data["width"] is None


@pytest.mark.parametrize("argv, message", [
    (["bench", "retinanet_r50_fpn", "--model", "retinanet_r50_fpn"], "not both"),
    (["bench", "timm-or-what"], "neither a config file"),
])
def test_bad_sources_are_one_line_and_exit_2(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_width_and_optimizers_the_bench_cannot_use(config_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", str(config_dir / "engine_cfg.py"), "--width", "0.5")
    assert code == 2 and "--width scales bundled models only" in err
    code, _, err = run(capsys, "bench", str(config_dir / "engine_cfg.py"), "--cfg-options",
                       "optim_wrapper.optimizer.type=RMSprop")
    assert code == 2 and "'RMSprop'" in err and "--optimizer adamw or sgd" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_on_cuda(config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Steps on the GPU, timed with CUDA events; the GPU in `machine`, memory per implementation."""
    path = tmp_path / "cuda.json"
    code, out, _ = run(capsys, "bench", "retinanet_r50_fpn", "--device", "cuda", "--width", "0.25",
                       "--repeats", "2", "--json", str(path))
    data = json.loads(path.read_text())
    assert code == 0 and "on CUDA" in out and "GPU:" in out
    impls = check_report(data, "cuda")
    machine = data["machine"]
    assert machine["gpu"] == torch.cuda.get_device_name() and machine["cuda"] == torch.version.cuda
    for r in impls.values():  # AdamW keeps two fp32 moments per element
        assert r["state_bytes"] >= 2 * 4 * data["numel"] and r["step_peak_bytes"] >= 0
    code, _, _ = run(capsys, "bench", str(config_dir / "engine_cfg.py"), "--device", "cuda", "--repeats", "1",
                     "--json", str(path))
    assert code == 0
    check_report(json.loads(path.read_text()), "cuda")
    code, out, _ = run(capsys, "bench", "retinanet_r50_fpn", "--device", "cuda", "--width", "0.25",
                       "--repeats", "1", "--clip", "1.0", "--amp", "--json", str(path))
    data = json.loads(path.read_text())
    assert code == 0 and data["device"] == "cuda" and "on CUDA" in out
    assert {"fastopt amp phase", "fastopt + torch unscale/clip"} <= {r["impl"] for r in data["results"]}
    assert all(r["phase_s"] > 0 and r["step_peak_bytes"] >= 0 for r in data["results"])
