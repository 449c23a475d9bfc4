"""The mmengine and mmcv 1.x plug-ins, inside the real frameworks."""

from __future__ import annotations

import copy
import importlib
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from .amp import cpu_scaler, refuse_scaler_passes
from .models import MixedNormNet
from .refs import mismatches, mmcv_runner, mmengine_build, quiet_mmengine_logger
from .torch_release import needs_cpu_scaler

PARAMWISE = dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={"head": dict(lr_mult=0.1)})


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def test_mmengine_registry_plugin_parity() -> None:
    build = mmengine_build()
    quiet_mmengine_logger()
    import fastopt.integrations.mmengine as plugin

    model = MixedNormNet()
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05), paramwise_cfg=PARAMWISE)
    ref = build(model, copy.deepcopy(cfg)).optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = build(model, dict(copy.deepcopy(cfg), constructor="FastOptimWrapperConstructor")).optimizer
        named = build(model, dict(copy.deepcopy(cfg), constructor="FastOptimWrapperConstructor",
                                  optimizer=dict(cfg["optimizer"], type="FastAdamW"))).optimizer
    assert mismatches(ref, fast, _names(model)) == []
    assert isinstance(fast, torch.optim.AdamW) and len(fast.param_groups) < len(ref.param_groups)
    assert type(named) is plugin.FastAdamW


def test_mmcv_registry_plugin_parity() -> None:
    runner = mmcv_runner()
    import fastopt.integrations.mmcv as plugin

    model = MixedNormNet()
    cfg = dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4, paramwise_cfg=PARAMWISE)
    ref = runner.build_optimizer(model, copy.deepcopy(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = runner.build_optimizer(model, dict(copy.deepcopy(cfg), constructor="FastOptimizerConstructor"))
        named = runner.build_optimizer(model, dict(copy.deepcopy(cfg), type="FastSGD",
                                                   constructor="FastOptimizerConstructor"))
    assert mismatches(ref, fast, _names(model)) == []
    assert type(named) is plugin.FastSGD and isinstance(named, torch.optim.SGD)


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 8, 8, generator=g), labels=torch.tensor(i % 2))


def _runner_model() -> Any:
    from mmengine.model import BaseModel

    class TinyDetector(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.calls, self.overflow_at = 0, None
            torch.manual_seed(0)
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.Conv2d(4, 4, 3, groups=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(4, 2)

        def forward(self, inputs: torch.Tensor, labels: torch.Tensor, mode: str = "tensor") -> Any:
            logits = self.head(self.backbone(inputs))
            if mode == "loss":
                self.calls += 1  # one iteration's loss may overflow: the loss scaler's skipped step
                overflow = math.inf if self.calls == self.overflow_at else 1.0
                return dict(loss=nn.functional.cross_entropy(logits.float(), labels) * overflow)
            return logits

    return TinyDetector()


#: the iteration whose loss is inf (only a loss scaler's run survives it: it skips that step)
RUNNER_OVERFLOW_ITER = 3


#: warm-up then a step: chainable schedules (each value from the group's current one)
STEP_SCHEDULE = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=3),
                 dict(type="MultiStepLR", milestones=[4], gamma=0.1, by_epoch=False)]


def _train(tmp: Path, constructor: str | None, max_norm: float = 1.0,
           loss_scale: str | float | dict | None = None, *, schedule: list[dict] = STEP_SCHEDULE,
           max_iters: int = 6, checkpoint_every: int = 100, resume_from: Path | None = None) -> Any:
    """A real mmengine Runner trained ``max_iters`` iterations (AdamW, paramwise_cfg, clip_grad,
    ``schedule``); with ``loss_scale`` its wrapper is mmengine's ``AmpOptimWrapper``; with
    ``resume_from`` it resumes that checkpoint first."""
    pytest.importorskip("mmengine")
    from mmengine.runner import Runner

    optim_wrapper: dict[str, Any] = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05),
                                         paramwise_cfg=PARAMWISE, clip_grad=dict(max_norm=max_norm))
    if loss_scale is not None:
        optim_wrapper.update(type="AmpOptimWrapper", loss_scale=loss_scale)
    if constructor:
        optim_wrapper["constructor"] = constructor
    model = _runner_model()
    model.overflow_at = RUNNER_OVERFLOW_ITER if loss_scale is not None else None
    cfg = dict(
        model=model, work_dir=str(tmp), experiment_name=tmp.name,
        train_dataloader=dict(dataset=_Data(), sampler=dict(type="DefaultSampler", shuffle=False),
                              batch_size=4, num_workers=0, collate_fn=dict(type="default_collate")),
        train_cfg=dict(by_epoch=False, max_iters=max_iters), optim_wrapper=optim_wrapper,
        param_scheduler=copy.deepcopy(schedule),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=checkpoint_every, by_epoch=False)),
        log_level="ERROR", randomness=dict(seed=0),
        load_from=None if resume_from is None else str(resume_from), resume=resume_from is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fastopt.integrations.mmengine  # noqa: F401

        runner = Runner(**cfg)
        runner.train()
    return runner


def _lr_by_name(runner: Any) -> dict[str, float]:
    names = {id(p): n for n, p in runner.model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"]}


def _same_weights(fast: Any, ref: Any) -> None:
    for (n, p), q in zip(fast.model.named_parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


class _CpuScalers:
    """GradScalers built on the CPU in place of mmengine's CUDA one, in order; with ``refuse``
    set, new ones refuse unscale_/step/update (a fused phase must not call them)."""

    def __init__(self) -> None:
        self.built: list[torch.amp.GradScaler] = []
        self.refuse = False

    def __call__(self, **kwargs: Any) -> torch.amp.GradScaler:
        scaler = torch.amp.GradScaler("cpu", **kwargs)
        if self.refuse:
            refuse_scaler_passes(scaler)
        self.built.append(scaler)
        return scaler


@pytest.fixture
def cpu_amp_wrapper(monkeypatch: pytest.MonkeyPatch) -> _CpuScalers:
    """mmengine's AmpOptimWrapper built without a GPU: its GPU check passed, its GradScaler a
    CPU one (the forward runs under CPU autocast)."""
    pytest.importorskip("mmengine")
    import importlib

    amp_module = importlib.import_module("mmengine.optim.optimizer.amp_optimizer_wrapper")
    scalers = _CpuScalers()
    monkeypatch.setattr(amp_module, "is_cuda_available", lambda: True)
    monkeypatch.setattr(amp_module, "GradScaler", scalers)
    return scalers


@needs_cpu_scaler
@pytest.mark.parametrize("loss_scale", ["dynamic", 512.0, dict(init_scale=1024.0, growth_interval=2)])
def test_mmengine_runner_with_a_loss_scaler_trains_like_the_default_constructor(
        tmp_path: Path, cpu_amp_wrapper: _CpuScalers, loss_scale: str | float | dict) -> None:
    """A real mmengine Runner with ``type='AmpOptimWrapper'`` (dynamic, fixed and dict loss
    scales; clipping on every step; an inf loss on one iteration): through fastopt's constructor
    the phase is fused (the scaler's unscale_/step/update never run) and training matches
    mmengine's default constructor: weights, logged grad norms (the inf one too), scaler state."""
    from mmengine.optim import AmpOptimWrapper

    ref = _train(tmp_path / "ref", None, 0.05, loss_scale)
    cpu_amp_wrapper.refuse = True
    fast = _train(tmp_path / "fast", "FastOptimWrapperConstructor", 0.05, loss_scale)
    assert fast.optim_wrapper.loss_scaler is cpu_amp_wrapper.built[-1] is not ref.optim_wrapper.loss_scaler
    wrapper = fast.optim_wrapper
    assert isinstance(wrapper, AmpOptimWrapper)
    assert type(wrapper).__name__ == "AmpOptimWrapperWithFusedAmpStep"
    assert type(wrapper.optimizer).__module__ == "fastopt.optim"
    ref_norms = list(ref.message_hub.get_scalar("train/grad_norm").data[0])
    norms = list(fast.message_hub.get_scalar("train/grad_norm").data[0])
    assert len(norms) == len(ref_norms) == 6 and not math.isfinite(ref_norms[RUNNER_OVERFLOW_ITER - 1])
    assert norms == pytest.approx(ref_norms, rel=1e-6, nan_ok=True)
    assert wrapper.loss_scaler.state_dict() == ref.optim_wrapper.loss_scaler.state_dict()
    _same_weights(fast, ref)


@pytest.mark.parametrize("schedule", [
    [dict(type="CosineAnnealingLR", T_max=8, eta_min_ratio=0.1, by_epoch=False, begin=0, end=8)],
    [dict(type="CosineRestartLR", periods=[3, 5], restart_weights=[1.0, 0.5], eta_min_ratio=0.05,
          by_epoch=False, begin=0, end=8)],
    STEP_SCHEDULE], ids=["cosine-eta_min_ratio", "cosine-restart", "warmup-step"])
def test_mmengine_runner_resumes_a_default_constructor_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: list[dict]) -> None:
    """A checkpoint saved by a real mmengine Runner with mmengine's default constructor (one
    group per parameter), resumed through fastopt's constructor (merged groups): the schedulers'
    per-group values (base lrs: cosine's eta_min_ratio and restarts read them) are taken onto the
    merged groups, so the resumed run gives every parameter mmengine's lr and weights."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # mmengine 0.10's checkpoints on torch >= 2.6
    _train(tmp_path / "first", None, schedule=schedule, max_iters=4, checkpoint_every=4)
    saved = tmp_path / "first" / "iter_4.pth"
    ref = _train(tmp_path / "ref", None, schedule=schedule, max_iters=8, resume_from=saved)
    fast = _train(tmp_path / "fast", "FastOptimWrapperConstructor", schedule=schedule, max_iters=8,
                  resume_from=saved)
    assert len(fast.optim_wrapper.optimizer.param_groups) < len(ref.optim_wrapper.optimizer.param_groups)
    assert fast.iter == ref.iter == 8
    assert _lr_by_name(fast) == pytest.approx(_lr_by_name(ref), rel=1e-12)
    _same_weights(fast, ref)


@pytest.mark.parametrize("max_norm", [1.0, 0.05])
def test_mmengine_runner_trains_like_the_default_constructor(tmp_path: Path, max_norm: float) -> None:
    """A real mmengine Runner (schedulers, clip_grad: clipping on every step with 0.05, on none
    with 1.0) trains as with mmengine's default constructor, and logs the same grad norms."""
    ref = _train(tmp_path / "ref", None, max_norm)
    ref_norms = list(ref.message_hub.get_scalar("train/grad_norm").data[0])
    fast = _train(tmp_path / "fast", "FastOptimWrapperConstructor", max_norm)
    norms = list(fast.message_hub.get_scalar("train/grad_norm").data[0])
    assert len(norms) == len(ref_norms) == 6 and norms == pytest.approx(ref_norms, rel=1e-6)
    assert (min(ref_norms) > max_norm) == (max_norm < 1)
    ref_opt, fast_opt = ref.optim_wrapper.optimizer, fast.optim_wrapper.optimizer
    assert type(fast_opt).__module__ == "fastopt.optim"
    assert len(fast_opt.param_groups) < len(ref_opt.param_groups)
    # Same per-parameter hyperparameters after 6 scheduled iterations (lr follows the schedulers) ...
    names = {id(p): n for n, p in fast.model.named_parameters()}
    by_name = {n: p for n, p in ref.model.named_parameters()}
    ref_hyper = {n: g for g in ref_opt.param_groups for p in g["params"]
                 for n in [next(k for k, v in by_name.items() if v is p)]}
    for g in fast_opt.param_groups:
        for p in g["params"]:
            want = ref_hyper[names[id(p)]]
            for key in ("lr", "weight_decay", "betas", "eps"):
                assert g[key] == pytest.approx(want[key]), (names[id(p)], key)
    _same_weights(fast, ref)  # ... and the same trained weights


def test_custom_imports_in_a_config_file(tmp_path: Path) -> None:
    """A fresh interpreter: only the config's custom_imports registers the plug-in."""
    pytest.importorskip("mmengine")
    import subprocess
    import sys
    import textwrap

    (tmp_path / "cfg.py").write_text(textwrap.dedent("""
        custom_imports = dict(imports=['fastopt.integrations.mmengine'], allow_failed_imports=False)
        optim_wrapper = dict(constructor='FastOptimWrapperConstructor',
                             optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
                             paramwise_cfg=dict(norm_decay_mult=0.0))
    """))
    script = textwrap.dedent(f"""
        import warnings; warnings.simplefilter('ignore')
        import torch.nn as nn
        from mmengine.config import Config
        from mmengine.optim import build_optim_wrapper
        cfg = Config.fromfile({str(tmp_path / "cfg.py")!r})
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        opt = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
        print(type(opt).__module__, len(opt.param_groups))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["fastopt.optim", "2"]


@pytest.fixture
def no_epoch_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """mmcv's EpochBasedRunner sleeps 2 s around every epoch (and 1 s after a run) against hook
    deadlocks in multi-process training; a one-process test has nothing to wait for."""
    from types import SimpleNamespace

    mmcv_runner()
    import mmcv.runner.epoch_based_runner as epoch_based_runner

    monkeypatch.setattr(epoch_based_runner, "time", SimpleNamespace(sleep=lambda seconds: None))


class _RunnerNet(nn.Module):
    """Conv + BN + linear with mmcv's ``train_step``; a batch holding sample ``overflow`` gets
    an inf loss (what a loss scale that is too large does)."""

    def __init__(self, overflow: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.overflow = overflow
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 2)

    def train_step(self, data: dict, optimizer: Any) -> dict:
        """mmcv's training step: the loss, its log value and the batch size."""
        loss = nn.functional.cross_entropy(self.head(self.backbone(data["inputs"])), data["labels"])
        if self.overflow is not None and bool((data["index"] == self.overflow).any()):
            loss = loss * math.inf
        return dict(loss=loss, log_vars=dict(loss=loss.item()), num_samples=len(data["labels"]))


def _mmcv_epoch_runner(tmp: Path, model: nn.Module, constructor: str | None, epochs: int,
                       meta: dict | None = None) -> tuple[Any, Any]:
    """(optimizer, runner): SGD with PARAMWISE built by mmcv (``constructor`` or its default) and
    an EpochBasedRunner around ``model``, with the fastopt plug-in registered."""
    runner_mod = mmcv_runner()
    import logging

    import fastopt.integrations.mmcv  # noqa: F401

    cfg = dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=1e-4, paramwise_cfg=PARAMWISE)
    if constructor:
        cfg["constructor"] = constructor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = runner_mod.build_optimizer(model, cfg)
        runner = runner_mod.EpochBasedRunner(model, optimizer=optimizer, work_dir=str(tmp), meta=meta,
                                             logger=logging.getLogger("fastopt-test"), max_epochs=epochs)
    return optimizer, runner


def _mmcv_train(tmp: Path, constructor: str | None, hook: str = "OptimizerHook",
                max_norm: float = 1.0, **hook_args: Any
                ) -> tuple[nn.Module, Any, list[torch.Tensor], list[float]]:
    model = _RunnerNet()
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer, runner = _mmcv_epoch_runner(tmp, model, constructor, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner.register_training_hooks(
            lr_config=dict(policy="step", step=[1], warmup="linear", warmup_iters=3, warmup_ratio=0.1),
            optimizer_config=dict(type=hook, grad_clip=dict(max_norm=max_norm), **hook_args))
        loader = torch.utils.data.DataLoader(_Data(), batch_size=4, shuffle=False)
        runner.run([loader], [("train", 1)])
    return model, optimizer, initial, list(runner.log_buffer.val_history["grad_norm"])


@pytest.mark.usefixtures("no_epoch_pause")
def test_mmcv_epoch_based_runner_trains_like_the_default_constructor(tmp_path: Path) -> None:
    ref_model, ref_opt, initial, _ = _mmcv_train(tmp_path / "ref", None)
    fast_model, fast_opt, _, _ = _mmcv_train(tmp_path / "fast", "FastOptimizerConstructor")
    assert all(not torch.equal(p, q) for p, q in zip(ref_model.parameters(), initial))  # it trained
    assert type(fast_opt).__module__ == "fastopt.optim"
    assert len(fast_opt.param_groups) < len(ref_opt.param_groups)
    for (n, p), q in zip(fast_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    lr = {id(p): g["lr"] for g in fast_opt.param_groups for p in g["params"]}
    ref_lr = {n: g["lr"] for g in ref_opt.param_groups for n, p in ref_model.named_parameters()
              if any(p is q for q in g["params"])}
    for n, p in fast_model.named_parameters():
        assert lr[id(p)] == pytest.approx(ref_lr[n])


def _refuse_mmcv_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on mmcv's own clip_grads (torch's in-place clip_grad_norm_) raises."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mmcv's in-place clip ran: the fused clip did not")

    monkeypatch.setattr(torch.nn.utils.clip_grad, "clip_grad_norm_", refuse)


@pytest.mark.usefixtures("no_epoch_pause")
@pytest.mark.parametrize("max_norm", [1.0, 0.05])
def test_mmcv_fast_optimizer_hook_clips_in_the_step(tmp_path: Path, max_norm: float,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A real mmcv EpochBasedRunner with FastOptimizerHook trains as with mmcv's OptimizerHook
    (default constructor, torch's clip_grad_norm_) and logs the same grad norms; mmcv's own
    clip never runs."""
    ref_model, _, _, ref_norms = _mmcv_train(tmp_path / "ref", None, "OptimizerHook", max_norm)
    _refuse_mmcv_clip(monkeypatch)
    fast_model, fast_opt, _, norms = _mmcv_train(tmp_path / "fast", "FastOptimizerConstructor",
                                                 "FastOptimizerHook", max_norm)
    assert fast_opt.fastopt_tier == "native"
    assert len(norms) == len(ref_norms) > 0
    assert (min(ref_norms) > max_norm) == (max_norm < 1)  # 0.05 clips every step, 1.0 none
    assert norms == pytest.approx(ref_norms, rel=1e-6)
    for (n, p), q in zip(fast_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.usefixtures("no_epoch_pause")
def test_mmcv_fast_gradient_cumulative_hook_clips_in_the_step(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """FastGradientCumulativeOptimizerHook (a step every 3 of 4 iterations per epoch, so the last
    two of 8 are a remainder with their own loss factor) trains as mmcv's
    GradientCumulativeOptimizerHook, clipping on every step, with the same logged norms; mmcv's
    own clip never runs."""
    ref_model, _, _, ref_norms = _mmcv_train(tmp_path / "ref", None, "GradientCumulativeOptimizerHook", 0.05,
                                             cumulative_iters=3)
    _refuse_mmcv_clip(monkeypatch)
    fast_model, fast_opt, _, norms = _mmcv_train(tmp_path / "fast", "FastOptimizerConstructor",
                                                 "FastGradientCumulativeOptimizerHook", 0.05,
                                                 cumulative_iters=3)
    assert fast_opt.fastopt_tier == "native"
    assert len(norms) == len(ref_norms) == 3 and min(ref_norms) > 0.05  # steps at iterations 3, 6, 8
    assert norms == pytest.approx(ref_norms, rel=1e-6)
    for (n, p), q in zip(fast_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


class _IndexedData(_Data):
    """``_Data`` with each sample's index, so a model can overflow on a fixed batch every epoch."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(super().__getitem__(i), index=torch.tensor(i))


OVERFLOW_INDEX = 8  # the third batch of every epoch: its loss is multiplied by inf
FP16_LOSS_SCALES = ["dynamic", 512.0, dict(init_scale=256.0, growth_interval=2)]


def _cpu_mmcv_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """mmcv's Fp16OptimizerHook builds a CUDA GradScaler, which turns itself off without a GPU:
    give it torch's CPU scaler so that it scales as on a GPU."""
    mmcv_runner()
    import mmcv.runner.hooks.optimizer as hooks

    monkeypatch.setattr(hooks, "GradScaler", lambda **kwargs: torch.amp.GradScaler("cpu", **kwargs))


def _mmcv_fp16_train(tmp: Path, hook: dict, constructor: str | None, *, epochs: int = 2,
                     lr_config: dict | None = None, resume: Path | None = None, checkpoint: bool = False,
                     fused: bool = False, overflow: int | None = OVERFLOW_INDEX
                     ) -> tuple[nn.Module, Any, Any]:
    """(model, optimizer, runner) after an mmcv EpochBasedRunner trained with the fp16 ``hook``
    config, the loss of the batch with sample ``overflow`` made inf; with ``fused`` the hook's
    scaler refuses unscale_, step and update."""
    model = _RunnerNet(overflow)
    optimizer, runner = _mmcv_epoch_runner(tmp, model, constructor, epochs, meta=dict())
    import fastopt.integrations.mmcv as plugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner.register_training_hooks(lr_config=copy.deepcopy(lr_config),  # mmcv pops its keys
                                       optimizer_config=copy.deepcopy(hook),
                                       checkpoint_config=dict(interval=1) if checkpoint else None)
        if fused:
            (fast_hook,) = [h for h in runner.hooks if isinstance(h, plugin.FastFp16OptimizerHook)]
            refuse_scaler_passes(fast_hook.loss_scaler)
        if resume is not None:
            runner.resume(str(resume))
        loader = torch.utils.data.DataLoader(_IndexedData(), batch_size=4, shuffle=False)
        runner.run([loader], [("train", 1)])
    return model, optimizer, runner


@pytest.mark.usefixtures("no_epoch_pause")
@needs_cpu_scaler
@pytest.mark.parametrize(("loss_scale", "fused"), [(scale, True) for scale in FP16_LOSS_SCALES]
                         + [("dynamic", False)])
def test_mmcv_fast_fp16_hook_trains_like_mmcvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               loss_scale: str | float | dict, fused: bool) -> None:
    """A real mmcv EpochBasedRunner (lr warmup and steps, an overflowing batch every epoch, clipping
    on every step) with FastFp16OptimizerHook trains as with mmcv's Fp16OptimizerHook: the same
    weights, logged grad norms and scaler state in runner.meta. With fastopt's optimizer the phase
    is fused (the scaler's unscale_/step/update never run); with torch's it is mmcv's sequence."""
    _cpu_mmcv_scaler(monkeypatch)
    lr_config = dict(policy="step", step=[1], warmup="linear", warmup_iters=3, warmup_ratio=0.1)
    hook = dict(grad_clip=dict(max_norm=0.05), loss_scale=loss_scale)
    ref_model, _, ref = _mmcv_fp16_train(tmp_path / "ref", dict(hook, type="Fp16OptimizerHook"), None,
                                         lr_config=lr_config)
    model, opt, fast = _mmcv_fp16_train(tmp_path / "fast", dict(hook, type="FastFp16OptimizerHook"),
                                        "FastOptimizerConstructor" if fused else None, lr_config=lr_config,
                                        fused=fused)
    assert (type(opt).__module__ == "fastopt.optim") == fused
    if fused:
        assert opt.fastopt_tier == "native"
    norms, ref_norms = fast.log_buffer.val_history["grad_norm"], ref.log_buffer.val_history["grad_norm"]
    assert len(norms) == len(ref_norms) == 8
    assert sum(not math.isfinite(n) for n in ref_norms) == 2  # one overflow per epoch
    assert norms == pytest.approx(ref_norms, rel=1e-6, nan_ok=True)
    assert fast.meta["fp16"]["loss_scaler"] == ref.meta["fp16"]["loss_scaler"]
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.usefixtures("no_epoch_pause")
@needs_cpu_scaler
@pytest.mark.parametrize(("loss_scale", "overflow"), [(scale, None) for scale in FP16_LOSS_SCALES]
                         + [("dynamic", OVERFLOW_INDEX)])
def test_mmcv_fast_gradient_cumulative_fp16_hook_trains_like_mmcvs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loss_scale: str | float | dict, overflow: int | None
) -> None:
    """FastGradientCumulativeFp16OptimizerHook against mmcv's GradientCumulativeFp16OptimizerHook
    (a step every 3 iterations and a remainder of 2; clipping; with ``overflow`` an inf batch in
    the first and last window): fused (the scaler's unscale_/step/update never run), the same
    weights, norms and scale."""
    _cpu_mmcv_scaler(monkeypatch)
    hook = dict(grad_clip=dict(max_norm=0.05), loss_scale=loss_scale, cumulative_iters=3)
    ref_hook = dict(hook, type="GradientCumulativeFp16OptimizerHook")
    ref_model, _, ref = _mmcv_fp16_train(tmp_path / "ref", ref_hook, None, overflow=overflow)
    fast_hook = dict(hook, type="FastGradientCumulativeFp16OptimizerHook")
    model, opt, fast = _mmcv_fp16_train(tmp_path / "fast", fast_hook, "FastOptimizerConstructor", fused=True,
                                        overflow=overflow)
    assert opt.fastopt_tier == "native"
    norms, ref_norms = fast.log_buffer.val_history["grad_norm"], ref.log_buffer.val_history["grad_norm"]
    skipped = sum(not math.isfinite(n) for n in ref_norms)
    assert len(norms) == len(ref_norms) == 3 and skipped == (0 if overflow is None else 2)
    assert norms == pytest.approx(ref_norms, rel=1e-6, nan_ok=True)
    assert fast.meta["fp16"]["loss_scaler"] == ref.meta["fp16"]["loss_scaler"]
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@needs_cpu_scaler
@pytest.mark.usefixtures("no_epoch_pause")
@pytest.mark.parametrize("loss_scale", FP16_LOSS_SCALES)
def test_mmcv_fast_fp16_hook_matches_the_gradscaler_sequence(tmp_path: Path, loss_scale: str | float | dict
                                                             ) -> None:
    """FastFp16OptimizerHook in an EpochBasedRunner against the explicit sequence with torch's CPU
    GradScaler and optimizer: scale, backward, unscale_, clip_grad_norm_, step, update."""
    hook = dict(type="FastFp16OptimizerHook", grad_clip=dict(max_norm=0.05), loss_scale=loss_scale)
    model, _, runner = _mmcv_fp16_train(tmp_path, hook, "FastOptimizerConstructor", fused=True)
    ref_model, _, _ = _mmcv_fp16_train(tmp_path / "init", dict(type="OptimizerHook"), None, epochs=0)
    groups = [{"params": [p], "weight_decay": 0.0 if p.dim() == 1 else 1e-4,
               "lr": 0.005 if n.startswith("head") else 0.05} for n, p in ref_model.named_parameters()]
    ref = torch.optim.SGD(groups, lr=0.05, momentum=0.9, foreach=False)
    scaler = cpu_scaler(loss_scale)
    norms = []
    for _ in range(2):
        for data in torch.utils.data.DataLoader(_IndexedData(), batch_size=4, shuffle=False):
            ref.zero_grad()
            scaler.scale(ref_model.train_step(data, ref)["loss"]).backward()
            scaler.unscale_(ref)
            norms.append(float(torch.nn.utils.clip_grad_norm_(list(ref_model.parameters()), 0.05)))
            scaler.step(ref)
            scaler.update(loss_scale if isinstance(loss_scale, float) else None)
    assert runner.log_buffer.val_history["grad_norm"] == pytest.approx(norms, rel=1e-6, nan_ok=True)
    assert runner.meta["fp16"]["loss_scaler"] == scaler.state_dict()
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@needs_cpu_scaler
@pytest.mark.usefixtures("no_epoch_pause")
def test_mmcv_fast_fp16_hook_resumes_the_scaler(tmp_path: Path) -> None:
    """The scaler's state goes into the checkpoint's meta and comes back on resume: one epoch,
    then a resumed second, ends as two uninterrupted epochs (weights, momentum, scale; without
    an overflow, which would reset the growth count and hide a scaler that was not resumed)."""
    hook = dict(type="FastFp16OptimizerHook", grad_clip=dict(max_norm=0.05),
                loss_scale=dict(init_scale=256.0, growth_interval=3))
    whole_model, whole_opt, whole = _mmcv_fp16_train(tmp_path / "whole", hook, "FastOptimizerConstructor",
                                                     overflow=None)
    _, _, first = _mmcv_fp16_train(tmp_path / "first", hook, "FastOptimizerConstructor", epochs=1,
                                   checkpoint=True, overflow=None)
    saved = torch.load(tmp_path / "first" / "epoch_1.pth", weights_only=False)["meta"]["fp16"]["loss_scaler"]
    assert saved == first.meta["fp16"]["loss_scaler"]
    assert (saved["scale"], saved["_growth_tracker"]) == (512.0, 1)  # grown after 3 of 4 steps
    model, opt, resumed = _mmcv_fp16_train(tmp_path / "second", hook, "FastOptimizerConstructor",
                                           resume=tmp_path / "first" / "epoch_1.pth", overflow=None)
    assert resumed.epoch == 2
    assert resumed.meta["fp16"]["loss_scaler"] == whole.meta["fp16"]["loss_scaler"]
    assert whole.meta["fp16"]["loss_scaler"]["scale"] == 1024.0
    for p, q in zip(model.parameters(), whole_model.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum_buffer"], whole_opt.state[q]["momentum_buffer"])


@needs_cpu_scaler
def test_mmcv_fast_fp16_hook_config() -> None:
    """Registered in mmcv's HOOKS, mmcv's loss_scale forms (and an int), mmcv's error otherwise; a
    scaler state saved by a disabled scaler (empty) leaves the scaler as configured."""
    from types import SimpleNamespace

    mmcv_runner()
    from mmcv.runner import HOOKS, Fp16OptimizerHook

    import fastopt.integrations.mmcv as plugin

    assert HOOKS.get("FastFp16OptimizerHook") is plugin.FastFp16OptimizerHook
    hook = plugin.FastFp16OptimizerHook()
    assert isinstance(hook, Fp16OptimizerHook) and hook.loss_scaler.get_scale() == 512.0
    assert (hook.coalesce, hook.bucket_size_mb, hook.distributed, hook.grad_clip) == (True, -1, True, None)
    assert plugin.FastFp16OptimizerHook(loss_scale=1024)._scale_update_param == 1024.0
    assert plugin.FastFp16OptimizerHook(loss_scale="dynamic").loss_scaler.get_scale() == 2.0**16
    assert plugin.FastFp16OptimizerHook(loss_scale=dict(init_scale=8.0)).loss_scaler.get_scale() == 8.0
    with pytest.raises(ValueError, match="loss_scale must be of type float, dict, or"):
        plugin.FastFp16OptimizerHook(loss_scale="static")
    runner = SimpleNamespace(model=nn.Linear(2, 2), meta={"fp16": {"loss_scaler": {}}})
    hook.before_run(runner)
    assert hook.loss_scaler.get_scale() == 512.0
    hook.before_run(SimpleNamespace(model=nn.Linear(2, 2), meta=None))


def test_mmcv_hooks_take_a_look_alike_optimizer_for_what_it_is() -> None:
    """mmcv's own hook tests hand the hooks a ``Mock`` optimizer: it has every attribute, so the
    hooks decide by type. With a Mock, ``FastOptimizerHook`` is mmcv's hook: the gradients are
    clipped in place by mmcv's ``clip_grad_norm_`` and nothing is handed to the Mock's step."""
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    mmcv_runner()
    import fastopt.integrations.mmcv as plugin

    model = nn.Linear(4, 4)
    model(torch.ones(2, 4)).pow(2).sum().backward()
    norm_before = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    optimizer = MagicMock()
    outputs = {"loss": torch.tensor(0.0, requires_grad=True), "num_samples": 2}
    runner = SimpleNamespace(model=model, optimizer=optimizer, outputs=outputs, log_buffer=MagicMock())
    hook = plugin.FastOptimizerHook(grad_clip=dict(max_norm=0.01))
    hook.after_train_iter(runner)
    assert not optimizer.clip_next_step.called
    norm_after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert float(norm_before) > 0.01 and float(norm_after) == pytest.approx(0.01, rel=1e-3)
    assert optimizer.step.called


# ------------------------------------------------------------ what the plug-ins change in their hosts


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter at the repository root."""
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def _scheduled_sgd(model: nn.Module) -> Any:
    """A plain torch SGD over one group per parameter (lrs 0.1, 0.2, ...) in mmengine's
    OptimWrapper, with mmengine's cosine schedule (eta_min_ratio: it reads the per-group base lrs)."""
    from mmengine.optim import CosineAnnealingLR, OptimWrapper

    groups = [{"params": [p], "lr": 0.1 * (i + 1)} for i, p in enumerate(model.parameters())]
    wrapper = OptimWrapper(torch.optim.SGD(groups, lr=0.1, momentum=0.9))
    return wrapper, CosineAnnealingLR(wrapper, T_max=8, eta_min_ratio=0.1, by_epoch=False)


def _steps(wrapper: Any, scheduler: Any, n: int) -> list[list[float]]:
    """``n`` optimizer + scheduler steps; the lrs of every group after each."""
    lrs = []
    for _ in range(n):
        wrapper.step()
        scheduler.step()
        lrs.append([g["lr"] for g in wrapper.param_groups])
    return lrs


@pytest.fixture
def scheduler_loading() -> Any:
    """The mmengine plug-in; whether its scheduler loading is in place is restored afterwards."""
    mmengine_build()
    quiet_mmengine_logger()
    import fastopt.integrations.mmengine as plugin

    was_applied = plugin.scheduler_loading_applied()
    yield plugin
    (plugin.apply_scheduler_loading if was_applied else plugin.restore_scheduler_loading)()


def test_patched_scheduler_loading_is_mmengines_own_for_other_optimizers(scheduler_loading: Any) -> None:
    """A torch optimizer that fastopt did not build: mmengine's scheduler loads its own state dict
    with the plug-in's loading in place exactly as with mmengine's own function."""
    plugin = scheduler_loading
    model = MixedNormNet()
    wrapper, scheduler = _scheduled_sgd(model)
    _steps(wrapper, scheduler, 3)
    saved = copy.deepcopy(scheduler.state_dict())
    outcomes = {}
    for applied in (True, False):
        (plugin.apply_scheduler_loading if applied else plugin.restore_scheduler_loading)()
        assert plugin.scheduler_loading_applied() is applied
        wrapper, scheduler = _scheduled_sgd(model)
        scheduler.load_state_dict(copy.deepcopy(saved))
        loaded = copy.deepcopy(scheduler.state_dict())
        outcomes[applied] = loaded, _steps(wrapper, scheduler, 4)
    assert outcomes[True][0] == outcomes[False][0] == saved
    assert outcomes[True][1] == outcomes[False][1]


def test_patched_scheduler_loading_maps_reference_lists_onto_merged_groups(scheduler_loading: Any) -> None:
    """A scheduler state saved against mmengine's per-parameter groups, loaded into a scheduler of a
    fastopt optimizer (merged groups): with the plug-in's loading every merged group gets the base
    lr of its parameters' reference groups; mmengine's own function keeps the saved lists as
    they are (one entry per reference group)."""
    from mmengine.optim import CosineAnnealingLR

    import fastopt

    plugin, build = scheduler_loading, mmengine_build()
    model = MixedNormNet()
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4), paramwise_cfg=PARAMWISE)
    ref = build(model, copy.deepcopy(cfg))
    ref_scheduler = CosineAnnealingLR(ref, T_max=8, eta_min_ratio=0.1, by_epoch=False)
    _steps(ref, ref_scheduler, 3)
    saved = copy.deepcopy(ref_scheduler.state_dict())
    ref_base = {id(p): saved["base_values"][i]
                for i, g in enumerate(ref.optimizer.param_groups) for p in g["params"]}

    def loaded_base_values() -> tuple[list[float], list[dict], int]:
        fast = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg))
        scheduler = CosineAnnealingLR(fast, T_max=8, eta_min_ratio=0.1, by_epoch=False)
        scheduler.load_state_dict(copy.deepcopy(saved))
        merged = fast.optimizer.param_groups
        assert len(merged) < len(ref.optimizer.param_groups)
        # mmengine's wrapper shows its base_param_settings as one more group, after the optimizer's
        return scheduler.base_values, merged, len(fast.param_groups) - len(merged)

    plugin.apply_scheduler_loading()
    base_values, merged, trailing = loaded_base_values()
    assert len(base_values) == len(merged) + trailing
    assert {id(p): base_values[j] for j, g in enumerate(merged) for p in g["params"]} == ref_base
    assert base_values[len(merged):] == saved["base_values"][len(ref.optimizer.param_groups):]
    plugin.restore_scheduler_loading()
    base_values, merged, trailing = loaded_base_values()
    assert base_values == saved["base_values"] and len(base_values) != len(merged) + trailing


def test_scheduler_loading_restores_mmengines_own_function() -> None:
    """In a fresh interpreter: the import replaces ``_ParamScheduler.load_state_dict``, restoring
    puts the very function object mmengine defined back, applying again replaces it again, each
    step is idempotent, and a reload of the plug-in still knows mmengine's original."""
    mmengine_build()
    done = _run_python(textwrap.dedent("""
        import importlib, warnings
        from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
        own = _ParamScheduler.load_state_dict
        import fastopt.integrations.mmengine as plugin
        assert _ParamScheduler.load_state_dict is not own and plugin.scheduler_loading_applied()
        assert plugin.MMENGINE_LOAD_STATE_DICT is own and _ParamScheduler.load_state_dict.__wrapped__ is own
        plugin.restore_scheduler_loading()
        assert vars(_ParamScheduler)["load_state_dict"] is own and not plugin.scheduler_loading_applied()
        plugin.restore_scheduler_loading()
        assert _ParamScheduler.load_state_dict is own
        plugin.apply_scheduler_loading()
        patched = _ParamScheduler.load_state_dict
        plugin.apply_scheduler_loading()
        assert _ParamScheduler.load_state_dict is patched is not own and plugin.scheduler_loading_applied()
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            plugin = importlib.reload(plugin)
        assert plugin.MMENGINE_LOAD_STATE_DICT is own and plugin.scheduler_loading_applied()
        plugin.restore_scheduler_loading()
        assert _ParamScheduler.load_state_dict is own
        print("ok")
    """))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_scheduler_loading_leaves_another_librarys_wrapper_alone() -> None:
    """Another library wraps the patched loader afterwards (``functools.wraps`` copies fastopt's
    marker): fastopt still counts as applied, does not apply a second time over it, and refuses to
    restore mmengine's own from under it."""
    mmengine_build()
    done = _run_python(textwrap.dedent("""
        import functools
        from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
        import fastopt.integrations.mmengine as plugin
        fastopts = _ParamScheduler.load_state_dict

        @functools.wraps(fastopts)
        def theirs(self, state_dict):
            return fastopts(self, state_dict)

        _ParamScheduler.load_state_dict = theirs
        assert plugin.scheduler_loading_applied()
        plugin.apply_scheduler_loading()
        assert vars(_ParamScheduler)["load_state_dict"] is theirs
        try:
            plugin.restore_scheduler_loading()
        except RuntimeError as exc:
            assert "another library" in str(exc)
        else:
            raise AssertionError("restored from under another library's wrapper")
        assert vars(_ParamScheduler)["load_state_dict"] is theirs
        print("ok")
    """))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


#: api -> (plug-in module, {host registry: a name the plug-in registers there})
PLUGIN_NAMES = {
    "mmengine": ("fastopt.integrations.mmengine", {
        "mmengine.registry.OPTIMIZERS": "FastSGD",
        "mmengine.registry.OPTIM_WRAPPER_CONSTRUCTORS": "FastOptimWrapperConstructor"}),
    "mmcv": ("fastopt.integrations.mmcv", {
        "mmcv.runner.OPTIMIZERS": "FastAdamW",
        "mmcv.runner.OPTIMIZER_BUILDERS": "FastOptimizerConstructor",
        "mmcv.runner.HOOKS": "FastOptimizerHook"}),
}


def _host_registries(api: str) -> dict[str, Any]:
    """``'module.NAME' -> registry`` of ``PLUGIN_NAMES[api]`` (skips when the host is absent)."""
    if api == "mmengine":
        mmengine_build()
        import mmengine.registry as where
    else:
        where = mmcv_runner()
    return {label: getattr(where, label.rpartition(".")[2]) for label in PLUGIN_NAMES[api][1]}


@pytest.mark.parametrize("api", list(PLUGIN_NAMES))
def test_plugins_keep_a_users_registration_of_the_same_name(api: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the plug-in registers that a project already registered for a class of its own: the
    plug-in warns, naming the registry and the name, and the project's class stays."""
    registries = _host_registries(api)
    module_name, names = PLUGIN_NAMES[api]
    plugin = importlib.import_module(module_name)
    theirs = {label: type(names[label], (), {"__module__": "my_project.custom"}) for label in registries}
    for label, registry in registries.items():
        monkeypatch.setitem(registry.module_dict, names[label], theirs[label])
    try:
        with pytest.warns(UserWarning) as caught:
            importlib.reload(plugin)
        messages = sorted(str(w.message) for w in caught)
        assert len(messages) == len(registries), messages
        for label, registry in registries.items():
            assert any(m.startswith(f"{names[label]!r} is already registered in {label} as "
                                    f"my_project.custom.{names[label]}; fastopt keeps that registration")
                       for m in messages), messages
            assert registry.module_dict[names[label]] is theirs[label]
            # the plug-in's other names are registered as usual
            others = [n for n in plugin.__all__ if n in registry.module_dict and n != names[label]]
            assert others and all(registry.module_dict[n] is getattr(plugin, n) for n in others)
    finally:
        monkeypatch.undo()
        importlib.reload(plugin)  # fastopt's own classes in every name again (silently)
    for label, registry in registries.items():
        assert registry.module_dict[names[label]] is getattr(plugin, names[label])


@pytest.mark.parametrize("api", list(PLUGIN_NAMES))
def test_reimporting_a_plugin_replaces_its_own_registrations_silently(api: str) -> None:
    """Reloading a plug-in registers the reloaded classes in place of the earlier ones, without a
    warning (the earlier ones are fastopt's own), and the host builds with them."""
    registries = _host_registries(api)
    module_name, names = PLUGIN_NAMES[api]
    plugin = importlib.import_module(module_name)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            previous = {label: registry.module_dict[names[label]] for label, registry in registries.items()}
            plugin = importlib.reload(plugin)
        for label, registry in registries.items():
            assert registry.module_dict[names[label]] is getattr(plugin, names[label])
            if previous[label].__module__ == module_name:  # defined by the plug-in: a new class now
                assert registry.module_dict[names[label]] is not previous[label]
    model, cfg = MixedNormNet(), dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if api == "mmengine":
            built = mmengine_build()(model, dict(optimizer=cfg, paramwise_cfg=PARAMWISE,
                                                 constructor="FastOptimWrapperConstructor")).optimizer
        else:
            built = mmcv_runner().build_optimizer(model, dict(cfg, paramwise_cfg=PARAMWISE,
                                                              constructor="FastOptimizerConstructor"))
    assert type(built).__module__ == "fastopt.optim"


def test_register_optimizers_keeps_a_taken_name() -> None:
    """``register_optimizers`` into a registry where one name is taken: the other two are
    registered, the taken one kept, with a warning naming the registry and the name."""
    from fastopt.integrations import FastAdam, FastAdamW, register_optimizers
    from fastopt.registry import Registry

    registry = Registry("scratch optimizers")
    mine = registry.register_module(name="FastSGD", module=type("MySGD", (), {}))
    with pytest.warns(UserWarning, match=r"'FastSGD' is already registered in the scratch registry as "
                                         r".*MySGD; fastopt keeps that registration"):
        assert register_optimizers(registry, "the scratch registry") == ["FastAdam", "FastAdamW"]
    assert registry.get("FastSGD") is mine
    assert (registry.get("FastAdam"), registry.get("FastAdamW")) == (FastAdam, FastAdamW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.register_module(name="FastSGD", module=mine, force=True)
        del registry.module_dict["FastSGD"]
        assert register_optimizers(registry, "the scratch registry") == ["FastSGD", "FastAdam", "FastAdamW"]


#: A finder in front of every other that finds no torchvision, installed or not.
NO_TORCHVISION = """
class NoTorchvision:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] == "torchvision":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorchvision)
"""


@pytest.mark.parametrize("torchvision, cause", [
    (NO_TORCHVISION, "ModuleNotFoundError: No module named 'torchvision'"),
    ("", "RuntimeError: operator torchvision::nms does not exist"),
], ids=["missing", "fails-as-it-loads"])
def test_mmcv_plugin_without_a_usable_torchvision_is_one_clear_import_error(
        tmp_path: Path, torchvision: str, cause: str) -> None:
    """mmcv.runner imports torchvision; where it does not import the plug-in raises one ImportError
    line naming torchvision and what to install, and puts nothing in its place."""
    pytest.importorskip("mmcv")
    broken = tmp_path / "torchvision"  # on the path: a torchvision that raises as it loads
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')")
    preamble = "import sys, warnings\nwarnings.simplefilter('ignore')\n" + torchvision
    done = _run_python(preamble + textwrap.dedent("""
        try:
            import fastopt.integrations.mmcv
        except ImportError as exc:
            print(exc.name)
            print(exc)
        print(sorted(m for m in sys.modules if m.startswith("torchvision")))
    """), PYTHONPATH=str(tmp_path))
    assert done.returncode == 0, done.stderr
    name, message, loaded = done.stdout.strip().splitlines()
    assert name == "torchvision"
    assert message.startswith("fastopt.integrations.mmcv needs mmcv.runner, which imports torchvision, "
                              f"and torchvision does not import here ({cause}")
    assert "install the torchvision release built for torch" in message
    assert loaded == "[]"  # nothing stands in for it
