"""The giant bundled models (100k and 1M tensors): named like any bundled model, counted
without being built, and built with detector-like parameter names."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

import fastopt
from fastopt.tools import cli, sources, zoo
from fastopt.tools.zoo import catalogue

GIANTS = {"giant_100k": 100_000, "giant_1m": 1_000_000}


def check_giant(name: str, model: Any) -> None:
    """Exactly the advertised tensors, the counts `fastopt models` shows, detector names."""
    assert zoo.count_tensors(model) == GIANTS[name]
    assert (zoo.count_tensors(model), zoo.count_numel(model)) == zoo.counts(name)
    tops = {n.partition(".")[0] for n, _ in model.named_parameters()}
    assert tops == {"backbone", "neck", "rpn_head", "roi_head"}
    names = dict(model.named_parameters())
    for part in ("backbone.stages.0.blocks.0.bn.weight", "backbone.stages.1.blocks.0.dwconv.weight",
                 "backbone.stages.2.blocks.0.norm.bias", "neck.fpn_convs.0.conv.weight",
                 "rpn_head.rpn_cls.weight", "roi_head.bbox_head.fc_cls.weight"):
        assert part in names


@pytest.mark.parametrize("name", list(GIANTS))
def test_giants_resolve_like_any_bundled_model(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    source = sources.resolve(name)
    assert source.kind == "zoo" and source.label == name
    api, cfg, clip = source.optim
    assert api == "mmengine" and clip is None and cfg["optimizer"]["type"] == "SGD"
    assert set(cfg["paramwise_cfg"]["custom_keys"]) == {"norm", "backbone.stem"}
    # counting never builds the backbone: known counts, whatever the width
    monkeypatch.setattr(catalogue, "synthetic", lambda *a, **k: pytest.fail("counting built the giant"))
    tensors, numel = zoo.counts(name)
    full = zoo.counts(name, 1.0)
    assert tensors == full[0] == GIANTS[name] and numel < full[1]


def test_giant_100k_builds_and_groups() -> None:
    model = sources.resolve("giant_100k").build()
    check_giant("giant_100k", model)
    _, cfg, _ = sources.resolve("giant_100k").optim
    opt = fastopt.build_optim_wrapper(model, cfg).optimizer
    assert sum(len(g["params"]) for g in opt.param_groups) == 100_000
    hypers = sorted((round(g["lr"], 6), g["weight_decay"], "decay_mult" in g) for g in opt.param_groups)
    # the stem (lr 0.1x); weights; biases (lr 2x, no decay); norms and depthwise convs (no decay);
    # LayerNorms through the 'norm' key, whose entries mmengine copies into their group
    assert hypers == [(0.002, 1e-4, False), (0.02, 0.0, False), (0.02, 0.0, True), (0.02, 1e-4, False),
                      (0.04, 0.0, False)]


def test_giants_build_on_the_requested_device() -> None:
    """Every tensor on the device a source is built on (the way CUDA runs build it), none left
    on the CPU."""
    model = sources.resolve("giant_100k").build("meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert zoo.count_tensors(model) == 100_000


@pytest.mark.skipif(os.environ.get("FASTOPT_BIG_TESTS") != "1",
                    reason="the 1M-tensor giant takes tens of seconds and GBs: set FASTOPT_BIG_TESTS=1")
def test_giant_1m_builds() -> None:
    check_giant("giant_1m", sources.resolve("giant_1m").build())


def test_models_json_lists_the_giants(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, tensors in GIANTS.items():
        row = rows[name]
        assert row["tensors"] == tensors and row["paramwise"] == "yes" and row["optimizer"] == "SGD"
        assert (row["tensors"], row["numel"]) == zoo.counts(name)
        assert row["numel_full"] == zoo.counts(name, 1.0)[1]
