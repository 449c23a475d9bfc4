"""The fastopt command line and its JSON outputs (layouts documented in docs/cli.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastopt.tools import cli, zoo


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0
    assert {r["name"] for r in rows} == set(zoo.MODELS)
    swin = next(r for r in rows if r["name"] == "cascade_mask_rcnn_swin_l")
    assert swin["tensors"] == 415 and swin["numel_full"] > 200_000_000 and swin["optimizer"] == "AdamW"


def test_explain_json_layout_and_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--model", "cascade_mask_rcnn_swin_l", "--json")
    data = json.loads(out)
    assert code == 0 and "absolute_pos_embed" in err  # the Swin config's key matches nothing here
    assert {"groups", "params", "api", "optimizer", "unused_keys"} <= data.keys()
    assert data["api"] == "mmengine" and data["unused_keys"] == ["absolute_pos_embed"]
    params = {p["name"]: p for p in data["params"]}
    assert len(params) == 415
    for p in params.values():
        assert {"name", "group", "rule", "lr", "weight_decay", "custom_key", "also_matched",
                "switched_off"} <= p.keys()
        assert 0 <= p["group"] < len(data["groups"])
    table = params["backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table"]
    assert table["rule"] == "custom" and table["custom_key"] == "relative_position_bias_table"
    assert table["weight_decay"] == 0.0
    norm = params["backbone.stages.0.blocks.0.norm1.weight"]
    assert norm["custom_key"] == "norm" and norm["weight_decay"] == 0.0
    assert sum(g["num_params"] for g in data["groups"]) == 415


def test_explain_reports_competing_keys_and_switched_off_rules(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cfg.py"
    config.write_text(textwrap.dedent("""
        model = dict(type='fastopt.tools.zoo:build', name='faster_rcnn_r50_fpn')
        optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
                         paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={
                             'backbone': dict(lr_mult=0.1), 'backbone.layer2': dict(lr_mult=0.5)}))
    """))
    code, out, _ = run(capsys, "explain", str(config), "--json", "--filter", r"^backbone\.layer2\.0\.bn1")
    data = json.loads(out)
    assert code == 0 and data["api"] == "mmcv"
    weight, _bias = data["params"]
    assert weight["name"] == "backbone.layer2.0.bn1.weight"
    assert weight["custom_key"] == "backbone.layer2" and weight["also_matched"] == ["backbone"]
    assert weight["switched_off"] == "norm"  # the custom key overrides the norm rule
    assert weight["lr"] == pytest.approx(0.01) and weight["weight_decay"] == 1e-4
    _, text, _ = run(capsys, "explain", str(config), "--filter", "layer2.0.bn1.bias")
    assert "also matched 'backbone'" in text and "overrides the norm rule" in text


def test_explain_marks_frozen_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--model", "faster_rcnn_r50_fpn", "--json",
                       "--filter", "^backbone.conv1")
    [p] = json.loads(out)["params"]
    assert code == 0
    assert p["group"] is None and p["rule"] == "frozen"  # mmengine leaves frozen parameters out


def test_explain_a_layer_decay_constructor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ViTDet's constructor decides the groups: the table shows its group names, not name lists."""
    config = tmp_path / "vitdet.py"
    config.write_text(textwrap.dedent("""
        model = dict(type='fastopt.tools.zoo:build', name='vitdet_h', depth=4)
        optim_wrapper = dict(
            constructor='LayerDecayOptimizerConstructor',
            paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=4),
            optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.1))
    """))
    code, text, _ = run(capsys, "explain", str(config), "--filter", r"^backbone\.pos_embed$")
    header = next(line for line in text.splitlines() if line.strip().startswith("group"))
    assert code == 0 and header.split() == ["group", "params", "numel", "lr", "weight_decay",
                                            "group_name", "lr_scale"]
    assert "layer_0_no_decay_pos_embed" in text and "param_names" not in text
    row = next(line for line in text.splitlines() if line.strip().startswith("backbone.pos_embed"))
    assert row.split()[1:3] == ["0", "constructor:LayerDecayOptimizerConstructor"]


def test_explain_parameters_a_constructor_leaves_out(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """TSM leaves frozen norm parameters out: no group and no hyperparameters reported."""
    config = tmp_path / "tsm.py"
    config.write_text(textwrap.dedent("""
        model = dict(type='fastopt.tools.zoo:build', name='faster_rcnn_r50_fpn')
        optim_wrapper = dict(constructor='TSMOptimWrapperConstructor', paramwise_cfg=dict(fc_lr5=True),
                             optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001))
    """))
    code, out, _ = run(capsys, "explain", str(config), "--json", "--filter", r"^backbone\.bn1\.weight$")
    [p] = json.loads(out)["params"]
    assert code == 0 and p["group"] is None and p["rule"].endswith("(left out)") and "lr" not in p
    _, text, _ = run(capsys, "explain", str(config), "--filter", r"^backbone\.bn1\.weight$")
    assert text.splitlines()[-1].split()[-2:] == ["-", "-"]


def test_profile_limits_set_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "profile", "--model", "retinanet_r50_fpn", "--repeats", "1")[0] == 0
    code, _, err = run(capsys, "profile", "--model", "retinanet_r50_fpn", "--repeats", "1",
                       "--max-groups", "1")
    assert code == 1 and "LIMIT EXCEEDED" in err
    code, _, err = run(capsys, "profile", "--model", "retinanet_r50_fpn", "--repeats", "1",
                       "--max-build-ms", "0.000001")
    assert code == 1 and "--max-build-ms" in err


@pytest.mark.filterwarnings("ignore")
def test_bench_json_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    code, out, _ = run(capsys, "bench", "--model", "retinanet_r50_fpn", "--width", "0.05", "--repeats", "1",
                       "--optimizer", "sgd", "--json", str(path))
    data = json.loads(path.read_text())
    assert code == 0 and "fastopt" in out
    assert {"model", "tensors", "numel", "results"} <= data.keys()
    impls = {r["impl"]: r for r in data["results"]}
    assert {"fastopt", "fastopt flat", "torch flat limit"} <= impls.keys()
    for r in data["results"]:
        assert {"impl", "construct_s", "step_s", "groups"} <= r.keys()
        assert r["step_s"] > 0
    assert impls["torch flat limit"]["construct_s"] is None and impls["torch flat limit"]["groups"] == 1
    assert impls["fastopt flat"]["construct_s"] is None
    assert impls["fastopt flat"]["groups"] == impls["fastopt"]["groups"]
    assert impls["fastopt"]["groups"] < data["tensors"]


@pytest.mark.filterwarnings("ignore")
def test_bench_no_flat_leaves_the_flat_mode_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    code, _, _ = run(capsys, "bench", "--model", "retinanet_r50_fpn", "--width", "0.05", "--repeats", "1",
                     "--optimizer", "sgd", "--no-flat", "--json", str(path))
    impls = {r["impl"] for r in json.loads(path.read_text())["results"]}
    assert code == 0 and "fastopt" in impls and "fastopt flat" not in impls


def test_bench_clip_times_the_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "phase.json"
    png = tmp_path / "phase.png"
    code, out, _ = run(capsys, "bench", "--model", "retinanet_r50_fpn", "--width", "0.05", "--repeats", "1",
                       "--clip", "0.1", "--amp", "--json", str(path), "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(path.read_text())
    assert code == 0 and "clip_grad max_norm 0.1" in out and "machine:" in out
    assert {"model", "max_norm", "tensors", "numel", "machine", "results"} <= data.keys()
    impls = {r["impl"] for r in data["results"]}
    assert {"fastopt step", "fastopt phase", "fastopt + torch clip", "mmengine", "mmengine+fused",
            "flat limit", "one gradient read", "fastopt amp phase", "fastopt + torch unscale/clip"} <= impls
    assert data["amp"] is True
    assert all(r["phase_s"] > 0 for r in data["results"])
    with pytest.raises(SystemExit, match="--clip must be a positive max_norm"):
        cli.main(["bench", "--model", "retinanet_r50_fpn", "--clip", "0"])


def test_unknown_model_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "--model", "retinanet_r50_fpx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastopt explain: error: 'retinanet_r50_fpx' is neither a config file, 'timm:NAME', "
                   "'torchvision:NAME', 'pkg.module:callable' nor a bundled model (`fastopt models`); "
                   "did you mean 'retinanet_r50_fpn'?"]


def test_explain_a_config_does_not_import_the_zoo(tmp_path: Path) -> None:
    """The bundled models are a library of their own: a config that names its own model
    never loads them."""
    config = tmp_path / "cfg.py"
    config.write_text(textwrap.dedent("""
        model = 'mini:net'
        optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
    """))
    (tmp_path / "mini.py").write_text("import torch\ndef net():\n    return torch.nn.Linear(2, 2)\n")
    code = ("import sys; from fastopt.tools.cli import main; main(['explain', sys.argv[1]]); "
            "assert 'fastopt.tools.zoo' not in sys.modules, 'fastopt.tools.zoo was imported'")
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "weight" in out.stdout
