"""Version-selectable semantics: fastopt under ``semantics='mmengine==V'`` / ``'mmcv==V'`` against
that release's own default constructor, per parameter, every key; and what differs by release
(frozen parameters, ``base_param_settings``, the optimizer's first argument) through wrappers,
checkpoints and ``explain``.

Earlier releases' ``default_constructor.py`` come from ``.references/`` (scripts/install_references.sh);
each is executed against the installed mmengine / mmcv, whose registries, logging and wrappers it
imports, with a scratch constructor registry so that it does not replace the installed class.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.metadata
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import fastopt
from fastopt import _core
from fastopt import semantics as S
from fastopt.checkpoint import per_param_state_dict

from . import models as M
from .refs import (
    assert_same_error,
    exec_original,
    mismatches,
    mmcv_runner,
    mmengine_build,
    outcome,
    quiet_mmengine_logger,
    reference_file,
    stand_in,
)
from .torch_release import HAS_CPU_SCALER

#: mmengine releases compared: every one whose constructor file differs from a neighbour's
#: (0.7.x / 0.8.x without the first-argument lookup, 0.9 on with it; frozen kept up to 0.10.3)
#: plus the installed 0.10.7. mmcv: the oldest supported, one between, the installed 1.7.2.
MMENGINE_RELEASES = ("0.7.0", "0.7.4", "0.8.0", "0.8.5", "0.9.1", "0.10.3", "0.10.4", "0.10.7")
MMCV_RELEASES = ("1.3.0", "1.5.0", "1.7.2")
INSTALLED = {"mmengine": "0.10.7", "mmcv": "1.7.2"}

MMENGINE_FILE = "mmengine/optim/optimizer/default_constructor.py"
MMCV_FILE = "mmcv/runner/optimizer/default_constructor.py"


# ---------------------------------------------------------------- the releases' constructors
def _installed(api: str) -> None:
    version = importlib.metadata.version(api)
    if version != INSTALLED[api]:
        pytest.skip(f"{api} {INSTALLED[api]} is the installed reference here, found {version}: "
                    "run scripts/install_references.sh")


@functools.cache
def _mmengine_release_class(version: str) -> type:
    path = reference_file(f"mmengine-{version}/{MMENGINE_FILE}")
    import mmengine.optim  # noqa: F401  (the relative import of optimizer_wrapper, the registrations)
    import mmengine.registry as real
    from mmengine.registry import Registry

    scratch = Registry(f"mmengine {version} constructors", parent=real.OPTIM_WRAPPER_CONSTRUCTORS,
                       scope=f"mmengine {version}")
    registry = stand_in("mmengine.registry", OPTIM_WRAPPER_CONSTRUCTORS=scratch,
                        OPTIM_WRAPPERS=real.OPTIM_WRAPPERS, OPTIMIZERS=real.OPTIMIZERS)
    module = exec_original(path, f"mmengine.optim.optimizer.default_constructor_{version.replace('.', '_')}",
                           {"mmengine.registry": registry})
    return module.DefaultOptimWrapperConstructor


def mmengine_release(version: str) -> Callable[[nn.Module, dict], Any]:
    """``build_optim_wrapper`` as mmengine ``version`` builds it: that release's constructor file
    (the installed package for 0.10.7) given the cfg without ``paramwise_cfg``."""
    mmengine_build()
    quiet_mmengine_logger()
    if version == INSTALLED["mmengine"]:
        _installed("mmengine")
        from mmengine.optim import DefaultOptimWrapperConstructor as ctor_cls
    else:
        ctor_cls = _mmengine_release_class(version)

    def build(model: nn.Module, cfg: dict) -> Any:
        cfg = copy.deepcopy(cfg)
        paramwise_cfg = cfg.pop("paramwise_cfg", None)
        return ctor_cls(optim_wrapper_cfg=cfg, paramwise_cfg=paramwise_cfg)(model)

    return build


@functools.cache
def _mmcv_release_class(version: str) -> type:
    path = reference_file(f"mmcv-{version}/{MMCV_FILE}")
    runner = mmcv_runner()
    from mmcv.utils import Registry

    scratch = Registry(f"mmcv {version} optimizer builders")
    builder = stand_in("mmcv.runner.optimizer.builder", OPTIMIZER_BUILDERS=scratch,
                       OPTIMIZERS=runner.OPTIMIZERS)
    module = exec_original(path, f"mmcv.runner.optimizer.default_constructor_{version.replace('.', '_')}",
                           {"mmcv.runner.optimizer.builder": builder})
    return module.DefaultOptimizerConstructor


def mmcv_release(version: str) -> Callable[[nn.Module, dict], Any]:
    """``build_optimizer`` as mmcv ``version`` builds it (the installed package for 1.7.2)."""
    runner = mmcv_runner()
    if version == INSTALLED["mmcv"]:
        _installed("mmcv")
        ctor_cls = runner.DefaultOptimizerConstructor
    else:
        ctor_cls = _mmcv_release_class(version)

    def build(model: nn.Module, cfg: dict) -> Any:
        cfg = copy.deepcopy(cfg)
        paramwise_cfg = cfg.pop("paramwise_cfg", None)
        return ctor_cls(cfg, paramwise_cfg)(model)

    return build


# ---------------------------------------------------------------- the matrix
#: the small models of the parity matrix (frozen, shared, frozen and shared, odd names, DDP) and
#: the detectors with a frozen stem; every model sees every config with SGD
MODELS: dict[str, Callable[[], nn.Module]] = {
    "mixed_norm": M.MixedNormNet,
    "shared": M.SharedNet,
    "frozen_stem": M.FrozenStemNet,
    "frozen_shared": M.FrozenSharedNet,
    "odd_names": M.OddNamesNet,
    "ddp_frozen": lambda: M.DataParallelLike(M.FrozenStemNet()),
    "faster_rcnn_r50_fpn": lambda: _zoo("faster_rcnn_r50_fpn"),
}
BIG = {"faster_rcnn_r50_fpn"}

OPTIMIZERS = {
    "sgd": dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4),
    "adamw": dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    "adam_nowd": dict(type="Adam", lr=3e-4),
}
PARAMWISE: dict[str, dict | None] = {
    "none": None,
    "norm0": dict(norm_decay_mult=0.0),
    "bias": dict(bias_lr_mult=2.0, bias_decay_mult=0.0),
    "flat": dict(flat_decay_mult=0.0, dwconv_decay_mult=0.5),
    "keys": dict(custom_keys={"backbone": dict(lr_mult=0.1), "bias": dict(decay_mult=0.0),
                              "embed": dict(lr_mult=0.5, momentum=0.5)}, norm_decay_mult=0.0),
    "bypass": dict(bypass_duplicate=True, norm_decay_mult=0.0, bias_decay_mult=0.0),
    "bypass_lr": dict(bypass_duplicate=True, bias_lr_mult=2.0),
    "lr_only": dict(custom_keys={"a.": dict(lr_mult=0.1)}, bias_lr_mult=2.0),
}
NEEDS_WD = {"norm0", "bias", "flat", "keys", "bypass"}


def _zoo(name: str) -> nn.Module:
    from fastopt.tools import zoo

    return zoo.build(name)


def _configs(model_name: str) -> list[tuple[str, str]]:
    """(optimizer, paramwise_cfg) names the matrix runs for one model."""
    return [(o, p) for o, ocfg in OPTIMIZERS.items() for p in PARAMWISE
            if not (p in NEEDS_WD and "weight_decay" not in ocfg) and not (model_name in BIG and o != "sgd")]


def _cases(releases: tuple[str, ...]) -> list[Any]:
    return [pytest.param(v, m, id=f"{v}-{m}") for v in releases for m in MODELS]


def _names(model: nn.Module) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), name)
    return out


def check(ref: tuple[Any, BaseException | None], fast: tuple[Any, BaseException | None],
          model: nn.Module) -> None:
    """The same error, or the same hyperparameters for every parameter (every key, value types)."""
    (built, ref_exc), (mine, fast_exc) = ref, fast
    if ref_exc is not None:
        assert fast_exc is not None, f"the reference raised {ref_exc!r}; fastopt built an optimizer"
        assert_same_error(ref_exc, fast_exc)
        return
    assert fast_exc is None, f"fastopt raised {fast_exc!r}; the reference built an optimizer"
    ref_opt, fast_opt = getattr(built, "optimizer", built), getattr(mine, "optimizer", mine)
    assert isinstance(mine, type(built)) and isinstance(fast_opt, type(ref_opt))
    bad = mismatches(ref_opt, fast_opt, _names(model))
    assert not bad, f"{len(bad)} mismatching parameters:\n" + "\n".join(bad[:20])
    assert len(fast_opt.param_groups) <= len(ref_opt.param_groups)


def _run_matrix(model_name: str, cfg_of: Callable[[str, str], dict],
                build_ref: Callable[[nn.Module, dict], Any],
                build_fast: Callable[[nn.Module, dict], Any]) -> None:
    """Every config of the matrix for one model: the reference and fastopt from the same cfg (left
    unmodified), compared by ``check``; one failure report naming each failing config."""
    failures = []
    for opt_name, pw_name in _configs(model_name):
        model = MODELS[model_name]()
        cfg = cfg_of(opt_name, pw_name)
        before = copy.deepcopy(cfg)
        ref = outcome(functools.partial(build_ref, model, cfg))
        fast = outcome(functools.partial(build_fast, model, cfg))
        try:
            assert cfg == before, "fastopt mutated its cfg"
            check(ref, fast, model)
        except AssertionError as exc:
            failures.append(f"{opt_name}-{pw_name}: {exc}")
    assert not failures, f"{len(failures)} configs differ:\n" + "\n".join(failures)


def _mmengine_cfg(opt_name: str, pw_name: str) -> dict:
    cfg = dict(optimizer=copy.deepcopy(OPTIMIZERS[opt_name]))
    if PARAMWISE[pw_name] is not None:
        cfg["paramwise_cfg"] = copy.deepcopy(PARAMWISE[pw_name])
    return cfg


def _mmcv_cfg(opt_name: str, pw_name: str) -> dict:
    cfg = copy.deepcopy(OPTIMIZERS[opt_name])
    if PARAMWISE[pw_name] is not None:
        cfg["paramwise_cfg"] = copy.deepcopy(PARAMWISE[pw_name])
    return cfg


@pytest.mark.parametrize(("version", "model_name"), _cases(MMENGINE_RELEASES))
def test_mmengine_release_parity(version: str, model_name: str) -> None:
    _run_matrix(model_name, _mmengine_cfg, mmengine_release(version),
                functools.partial(fastopt.build_optim_wrapper, semantics=f"mmengine=={version}"))


@pytest.mark.parametrize(("version", "model_name"), _cases(MMCV_RELEASES))
def test_mmcv_release_parity(version: str, model_name: str) -> None:
    _run_matrix(model_name, _mmcv_cfg, mmcv_release(version),
                functools.partial(fastopt.build_optimizer, semantics=f"mmcv=={version}"))


@pytest.mark.parametrize("version", ["0.10.3", "0.10.4"])
@pytest.mark.parametrize("model_name", ["shared", "frozen_stem", "frozen_shared"])
def test_oracle_release_parity(version: str, model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain-Python rules (what runs without the native core) on the frozen and shared models,
    either side of 0.10.4: the duplicate / bypass / frozen order of the oracle, not only of ``_C``."""
    monkeypatch.setattr(_core, "_C", None)
    _run_matrix(model_name, _mmengine_cfg, mmengine_release(version),
                functools.partial(fastopt.build_optim_wrapper, semantics=f"mmengine=={version}"))


def test_release_matrix_covers_every_frozen_outcome() -> None:
    """The matrix is not vacuous: under mmengine 0.10.3 a frozen parameter is in a group and a
    frozen tied one raises without bypass_duplicate; under 0.10.4 both build, without them."""
    for version, kept in (("0.10.3", True), ("0.10.4", False)):
        build = mmengine_release(version)
        model = M.FrozenStemNet()
        sgd = dict(optimizer=dict(OPTIMIZERS["sgd"]), paramwise_cfg=dict(norm_decay_mult=0.0))
        held = {id(p) for g in build(model, sgd).optimizer.param_groups for p in g["params"]}
        assert (id(model.backbone.conv1.weight) in held) is kept
        _, exc = outcome(functools.partial(build, M.FrozenSharedNet(), sgd))
        assert (exc is not None) is kept, exc


# ---------------------------------------------------------------- Semantics itself
def test_parse_and_str() -> None:
    s = S.parse("mmengine==0.10.3")
    assert (s.api, s.version, str(s)) == ("mmengine", (0, 10, 3), "mmengine==0.10.3")
    assert S.parse(" mmcv == 1.5 ").version == (1, 5, 0)
    assert S.parse(s) is s
    assert (s.keep_frozen, s.base_param_settings, s.first_arg_lookup) == (True, True, True)
    assert S.parse("mmengine==0.10.4").keep_frozen is False
    old = S.parse("mmengine==0.7.4")
    assert (old.keep_frozen, old.base_param_settings, old.first_arg_lookup) == (True, False, False)
    assert S.parse("mmengine==0.8.0").base_param_settings and not S.parse("mmengine==0.8.5").first_arg_lookup
    mmcv = S.parse("mmcv==1.3.0")
    assert (mmcv.keep_frozen, mmcv.base_param_settings, mmcv.first_arg_lookup) == (True, False, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.keep_frozen = False  # type: ignore[misc]


@pytest.mark.parametrize(("spec", "error", "pattern"), [
    ("mmdet==3.0.0", ValueError, "unknown API 'mmdet'"),
    ("mmengine", ValueError, "API==VERSION"),
    ("mmengine==0.10.x", ValueError, "malformed version '0.10.x'"),
    ("mmengine==0.10.3.1", ValueError, "malformed version"),
    ("mmengine==", ValueError, "malformed version"),
    ("mmengine==0.6.9", ValueError, "outside the supported releases mmengine 0.7.0 to 0.10.7"),
    ("mmengine==0.10.8", ValueError, "outside the supported releases"),
    ("mmcv==2.0.0", ValueError, "outside the supported releases mmcv 1.3.0 to 1.7.2"),
    ("mmcv==1.2.7", ValueError, "outside"),
    (3, TypeError, "semantics must be a str"),
])
def test_parse_errors(spec: Any, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        S.parse(spec)


def test_default_follows_the_installed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"mmengine": (0, 9, 1), "mmcv": None}
    monkeypatch.setattr(S, "installed_version", lambda api: installed[api])
    assert str(S.default("mmengine")) == "mmengine==0.9.1"
    assert str(S.default("mmcv")) == "mmcv==1.7.2"  # not installed: the newest
    installed.update(mmengine=(0, 11, 0), mmcv=(2, 1, 0))
    assert str(S.default("mmengine")) == "mmengine==0.10.7"  # newer than known
    assert str(S.default("mmcv")) == "mmcv==1.7.2"  # mmcv 2.x has no build_optimizer
    installed.update(mmengine=(0, 6, 0), mmcv=(1, 4, 8))
    with pytest.warns(UserWarning, match="older than the oldest supported"):
        assert str(S.default("mmengine")) == "mmengine==0.7.0"
    assert str(S.default("mmcv")) == "mmcv==1.4.8"
    monkeypatch.undo()
    assert str(S.default("mmengine")) == f"mmengine=={importlib.metadata.version('mmengine')}"


def test_constructors_take_semantics_and_check_the_api() -> None:
    sgd = dict(type="SGD", lr=0.1)
    assert str(fastopt.DefaultOptimizerConstructor(sgd).semantics) == "mmcv==1.7.2"
    ctor = fastopt.DefaultOptimWrapperConstructor(dict(optimizer=sgd), semantics="mmengine==0.8.0")
    assert ctor.semantics == S.parse("mmengine==0.8.0")
    with pytest.raises(ValueError, match="is for mmcv, but this is an mmengine constructor"):
        fastopt.DefaultOptimWrapperConstructor(dict(optimizer=sgd), semantics="mmcv==1.7.2")
    with pytest.raises(ValueError, match="is for mmengine"):
        fastopt.build_optimizer(nn.Linear(2, 2), sgd, semantics=S.parse("mmengine==0.10.3"))
    # the recipe constructors inherit the keyword
    tsm = fastopt.TSMOptimWrapperConstructor(dict(optimizer=sgd), semantics="mmengine==0.7.0")
    assert str(tsm.semantics) == "mmengine==0.7.0"


def test_keep_frozen_and_the_cfg_is_left_alone() -> None:
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4), paramwise_cfg=dict(norm_decay_mult=0.0))
    before = copy.deepcopy(cfg)
    for version, kept in (("0.10.3", True), ("0.10.4", False), ("0.7.0", True)):
        model = M.FrozenStemNet()
        opt = fastopt.build_optim_wrapper(model, cfg, semantics=f"mmengine=={version}").optimizer
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert all((id(p) in held) is kept for p in frozen), version
    assert cfg == before


def test_first_argument_name_from_09() -> None:
    """An optimizer whose first argument is not ``params`` (colossalai's HybridAdam takes
    ``model_params``): built from 0.9 on, a TypeError before, in the references and in fastopt."""

    class ModelParamsSGD(torch.optim.SGD):
        def __init__(self, model_params: Any, lr: float = 0.1, **kwargs: Any) -> None:
            super().__init__(model_params, lr=lr, **kwargs)

    for version in ("0.8.5", "0.9.1"):
        cfg = dict(optimizer=dict(type=ModelParamsSGD, lr=0.1, weight_decay=1e-4),
                   paramwise_cfg=dict(norm_decay_mult=0.0))
        model = M.MixedNormNet()
        ref = outcome(functools.partial(mmengine_release(version), model, cfg))
        fast = outcome(functools.partial(fastopt.build_optim_wrapper, model, cfg,
                                         semantics=f"mmengine=={version}"))
        assert (ref[1] is None) is (version == "0.9.1"), ref[1]
        check(ref, fast, model)


# ---------------------------------------------------------------- explain
def test_explain_records_the_semantics(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4), paramwise_cfg=dict(norm_decay_mult=0.0))
    old = fastopt.explain(M.FrozenStemNet(), cfg, semantics="mmengine==0.10.3")
    new = fastopt.explain(M.FrozenStemNet(), cfg, semantics="mmengine==0.10.4")
    assert old.semantics == "mmengine==0.10.3" and old.to_json()["semantics"] == "mmengine==0.10.3"
    frozen = "backbone.conv1.weight"
    assert {p.name: p.group is not None for p in old.params}[frozen]
    assert {p.name: p.group for p in new.params}[frozen] is None
    assert {p.name: p.rule for p in old.params}[frozen] == "frozen"
    default = fastopt.explain(M.FrozenStemNet(), dict(type="SGD", lr=0.1))
    assert default.semantics == "mmcv==1.7.2"

    from fastopt.tools.cli import main

    assert main(["explain", "--model", "retinanet_r50_fpn"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert f"mmengine=={importlib.metadata.version('mmengine')} semantics" in header


# ---------------------------------------------------------------- wrappers: base_param_settings
def _wrapper_cfg(wrapper: Any, pw: dict | None) -> dict:
    cfg: dict = dict(type=wrapper, optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05))
    if pw is not None:
        cfg["paramwise_cfg"] = pw
    return cfg


def test_own_wrapper_base_param_settings_follow_the_semantics() -> None:
    pw = dict(norm_decay_mult=0.0)
    for version, expected in (("0.7.4", False), ("0.8.0", True), ("0.10.7", True)):
        # (AmpOptimWrapper scales losses on the CPU here: torch >= 2.3)
        for wrapper in (fastopt.OptimWrapper, fastopt.AmpOptimWrapper)[:2 if HAS_CPU_SCALER else 1]:
            w = fastopt.build_optim_wrapper(M.MixedNormNet(), _wrapper_cfg(wrapper, pw),
                                            semantics=f"mmengine=={version}")
            assert type(w) is wrapper and len(w.optimizer.param_groups) > 1
            sd = w.state_dict()
            assert ("base_param_settings" in sd) is expected, (version, wrapper)
            assert len(w.param_groups) == len(w.optimizer.param_groups) + expected
            assert ("base_lr" in w.get_lr()) is expected
            if expected:
                assert sd["base_param_settings"]["lr"] == 1e-2
                assert w.param_groups[-1] is w.base_param_settings
            # either form loads
            w.load_state_dict(copy.deepcopy(sd))
            without = {k: v for k, v in copy.deepcopy(sd).items() if k != "base_param_settings"}
            w.load_state_dict(without)
    one = fastopt.build_optim_wrapper(M.MixedNormNet(), _wrapper_cfg(fastopt.OptimWrapper, None),
                                      semantics="mmengine==0.10.7")
    assert len(one.optimizer.param_groups) == 1 and "base_param_settings" not in one.state_dict()


def test_mmengine_wrapper_with_one_merged_group_loads_a_reference_checkpoint() -> None:
    """fastopt merges the reference's per-parameter groups down to one: mmengine's own wrapper then
    has no base_param_settings, the reference's does; its checkpoint still loads (the wrapper takes
    the entry, the optimizer maps the per-parameter layout) and training continues identically."""
    build_ref = mmengine_build()
    quiet_mmengine_logger()
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05),
               paramwise_cfg=dict(bypass_duplicate=True))
    a = M.SharedNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared tensors bypassed
        ref = build_ref(a, copy.deepcopy(cfg))
        for step in range(2):
            _grads(a, step)
            ref.step()
        saved = copy.deepcopy(ref.state_dict())
        b = copy.deepcopy(a)
        fast = fastopt.build_optim_wrapper(b, cfg)
    assert "base_param_settings" in saved
    assert len(fast.optimizer.param_groups) == 1 and "base_param_settings" not in fast.state_dict()
    fast.load_state_dict(copy.deepcopy(saved))
    _same_state(ref.optimizer, a, fast.optimizer, b)
    for model, opt in ((a, ref), (b, fast)):
        _grads(model, 9)
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- checkpoints across the frozen layouts
def _grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) if p.requires_grad else None


def _same_state(ref_opt: torch.optim.Optimizer, a: nn.Module, fast_opt: torch.optim.Optimizer,
                b: nn.Module) -> None:
    """Per parameter (matched by name), the same optimizer state and the same hyperparameters."""
    ref_hyper = {id(p): {k: v for k, v in g.items() if k != "params"}
                 for g in ref_opt.param_groups for p in g["params"]}
    fast_hyper = {id(p): {k: v for k, v in g.items() if k != "params"}
                  for g in fast_opt.param_groups for p in g["params"]}
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if id(q) not in fast_hyper:
            continue  # a frozen parameter this semantics leaves out
        if id(p) in ref_hyper:
            assert ref_hyper[id(p)] == fast_hyper[id(q)], name
        s, t = ref_opt.state.get(p, {}), fast_opt.state.get(q, {})
        assert s.keys() == t.keys(), name
        for key in s:
            torch.testing.assert_close(s[key], t[key], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("saved_by", ["0.10.3", "0.10.7"])
@pytest.mark.parametrize("loaded_under", ["0.10.3", "0.10.7"])
def test_checkpoints_of_either_frozen_layout_resume(saved_by: str, loaded_under: str) -> None:
    """Saved by mmengine 0.10.3's constructor (frozen parameters as bare groups) or the installed
    0.10.7's (absent), with base_param_settings; resumed by fastopt under either semantics: the
    same state, the same next step; and back into the reference layout of the semantics chosen."""
    build_ref = mmengine_release(saved_by)
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05),
               paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={"bbox_head": dict(lr_mult=0.1)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = M.FrozenStemNet()
        ref = build_ref(a, cfg)
        n_frozen = sum(not p.requires_grad for p in a.parameters())
        n_trainable = sum(p.requires_grad for p in a.parameters())
        assert len(ref.optimizer.param_groups) == n_trainable + (n_frozen if saved_by == "0.10.3" else 0)
        for step in range(3):
            _grads(a, step)
            ref.step()
        saved = copy.deepcopy(ref.state_dict())
        assert "base_param_settings" in saved
        b = copy.deepcopy(a)
        fast = fastopt.build_optim_wrapper(b, cfg, semantics=f"mmengine=={loaded_under}")
    fast.load_state_dict(copy.deepcopy(saved))
    _same_state(ref.optimizer, a, fast.optimizer, b)
    for model, opt in ((a, ref), (b, fast)):
        _grads(model, 99)
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

    # ... and back, in the layout of the semantics fastopt follows, loaded by that release
    back = per_param_state_dict(fast.optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = copy.deepcopy(b)
        ref2 = mmengine_release(loaded_under)(c, cfg)
    assert len(back["param_groups"]) == len(ref2.optimizer.param_groups)
    ref2.load_state_dict(copy.deepcopy(back))
    _same_state(ref2.optimizer, c, fast.optimizer, b)


def test_layout_mismatch_names_both_layouts() -> None:
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4), paramwise_cfg=dict(norm_decay_mult=0.0))
    opt = fastopt.build_optim_wrapper(M.FrozenStemNet(), cfg, semantics="mmengine==0.10.3").optimizer
    bad = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}, {"lr": 0.1, "params": [1]}]}
    with pytest.raises(ValueError, match=r"one group per parameter for \d+ parameters or one group per"):
        fastopt.load_per_param_state_dict(opt, bad)
