"""Learning-rate schedules from configs, run by the frameworks' own code on any optimizer.

``simulate`` drives an optimizer's param groups through a whole schedule without
training: mmengine ``param_scheduler`` lists (stepped as mmengine's ParamSchedulerHook
does: iteration-based ones after every iteration, epoch-based ones after every epoch) or
mmcv 1.x ``lr_config`` (built and called as mmcv's runner does). Schedules act per param
group, so on fastopt's merged groups an update costs O(groups), not O(parameters).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from ..integrations import import_mmcv_runner

__all__ = ["lr_curve", "simulate"]


class _Runner:
    """The attributes mmcv's LrUpdaterHook reads from a runner."""

    def __init__(self, optimizer: torch.optim.Optimizer, iters_per_epoch: int, max_epochs: int) -> None:
        self.optimizer = optimizer
        self.data_loader = range(iters_per_epoch)
        self.max_epochs = max_epochs
        self.max_iters = iters_per_epoch * max_epochs
        self.epoch = 0
        self.iter = 0
        self.inner_iter = 0


def _mmcv_hook(lr_config: dict) -> Any:
    hooks = import_mmcv_runner("mmcv 1.x's lr_config schedules").HOOKS
    from mmcv.utils import build_from_cfg

    cfg = copy.deepcopy(lr_config)
    policy = cfg.pop("policy")
    if policy == policy.lower():
        policy = policy.title()  # mmcv: 'step' -> StepLrUpdaterHook, 'CosineAnnealing' as is
    cfg["type"] = policy + "LrUpdaterHook"
    return build_from_cfg(cfg, hooks)


def _mmengine_schedulers(optimizer: torch.optim.Optimizer, schedulers: list[dict],
                         iters_per_epoch: int) -> list[Any]:
    import mmengine.optim  # noqa: F401  (registers the schedulers)
    from mmengine.registry import PARAM_SCHEDULERS

    built = []
    for cfg in schedulers:
        cfg = copy.deepcopy(cfg)
        name = cfg.pop("type")
        cls = PARAM_SCHEDULERS.get(name) if isinstance(name, str) else name
        if cls is None:
            raise KeyError(f"{name!r} is not one of mmengine's param schedulers")
        if cfg.get("by_epoch", True) and cfg.pop("convert_to_iter_based", False):
            built.append(cls.build_iter_from_epoch(optimizer, epoch_length=iters_per_epoch, **cfg))
        else:
            built.append(cls(optimizer, **cfg))
    return built


def simulate(optimizer: torch.optim.Optimizer, cfg: dict, iters_per_epoch: int, max_epochs: int,
             on_iter: Callable[[int, torch.optim.Optimizer], None]) -> None:
    """Run ``cfg``'s schedule (``param_scheduler`` or ``lr_config``) over ``optimizer``, calling
    ``on_iter(iteration, optimizer)`` with the lrs each training iteration would use."""
    if "param_scheduler" in cfg:
        schedulers = cfg["param_scheduler"]
        schedulers = [schedulers] if isinstance(schedulers, dict) else schedulers
        built = _mmengine_schedulers(optimizer, schedulers, iters_per_epoch)
        it = 0
        for _ in range(max_epochs):
            for _ in range(iters_per_epoch):
                on_iter(it, optimizer)
                it += 1
                for s in built:
                    if not s.by_epoch:
                        s.step()
            for s in built:
                if s.by_epoch:
                    s.step()
        return
    if "lr_config" in cfg:
        hook = _mmcv_hook(cfg["lr_config"])
        runner = _Runner(optimizer, iters_per_epoch, max_epochs)
        hook.before_run(runner)
        for epoch in range(max_epochs):
            runner.epoch = epoch
            hook.before_train_epoch(runner)
            for i in range(iters_per_epoch):
                runner.inner_iter = i
                hook.before_train_iter(runner)
                on_iter(runner.iter, optimizer)
                runner.iter += 1
        return
    raise ValueError("the config has neither `param_scheduler=` (mmengine) nor `lr_config=` (mmcv 1.x)")


def lr_curve(cfg: dict, iters_per_epoch: int, max_epochs: int | None = None) -> list[float]:
    """The lr at every iteration of ``cfg``'s schedule for a base lr taken from its optimizer."""
    opt_cfg = cfg.get("optim_wrapper", {}).get("optimizer") or cfg.get("optimizer") or {}
    base_lr = float(opt_cfg.get("lr", 0.01))
    if max_epochs is None:
        max_epochs = int(cfg.get("train_cfg", {}).get("max_epochs")
                         or cfg.get("runner", {}).get("max_epochs") or cfg.get("total_epochs") or 12)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    lrs: list[float] = []
    simulate(optimizer, cfg, iters_per_epoch, max_epochs, lambda _, o: lrs.append(o.param_groups[0]["lr"]))
    return lrs
