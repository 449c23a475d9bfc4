"""The optimizer phase with gradient clipping: what a training iteration spends after backward.

All variants run in one process on the same model with repeats interleaved (A B C ... A B C)
and medians reported; every step sees fresh gradient tensors.

    python benchmarks/bench_phase.py                       # Swin-L Cascade Mask R-CNN, AdamW, max_norm 0.1
    python benchmarks/bench_phase.py --max-norm 35 --optimizer sgd

Variants:
  fastopt step              the plain step, no clipping (the yardstick)
  fastopt phase             fastopt's OptimWrapper with clip_grad: one native norm pass, the
                            coefficient applied inside the step kernel
  fastopt + torch clip      torch.nn.utils.clip_grad_norm_, then fastopt's step
  mmengine                  mmengine's OptimWrapper with clip_grad, as built by mmengine
  mmengine+fused            the same with fused=True
  flat limit                the norm of one flat gradient plus torch's fused step on one flat
                            tensor of the same size
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from typing import Any

import torch

import fastopt
from fastopt import zoo
from fastopt.bench import OPTIMIZER_CFGS, interleaved_step_times, log, machine, machine_line, mmengine_builder

DEFAULT_WIDTH = {"cascade_mask_rcnn_swin_l": 0.35, "vitdet_h": 0.21}
#: issue targets: the phase at most 1.35x the plain step; at least 1.4x faster than the step
#: plus torch's clipping; at least 2x faster than mmengine's wrapper with fused=True
TARGETS = {"fastopt step": 1 / 1.35, "fastopt + torch clip": 1.4, "mmengine+fused": 2.0}


class _Phase:
    """Something with ``step()`` for the interleaved timer, and the parameters it steps."""

    def __init__(self, step: Any, params: list[torch.Tensor]) -> None:
        self.step = step
        self.params = params


def build(model: torch.nn.Module, opt_cfg: dict, paramwise: dict | None,
          max_norm: float) -> dict[str, _Phase]:
    """Every variant over the same parameters (the flat limit over a flat tensor)."""
    clip = dict(max_norm=max_norm, norm_type=2)
    cfg = dict(optimizer=dict(opt_cfg), paramwise_cfg=paramwise)
    out: dict[str, _Phase] = {}
    plain = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer
    params = [p for g in plain.param_groups for p in g["params"]]
    out["fastopt step"] = _Phase(plain.step, params)
    phase = fastopt.OptimWrapper(fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer,
                                 clip_grad=clip)
    out["fastopt phase"] = _Phase(phase.step, params)
    torch_clip_opt = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer

    def torch_clip_then_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, **clip)
        torch_clip_opt.step()

    out["fastopt + torch clip"] = _Phase(torch_clip_then_step, params)
    ref = mmengine_builder()
    if ref is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapper = ref(model, dict(copy.deepcopy(cfg), clip_grad=clip))
            fused_cfg = dict(copy.deepcopy(cfg), clip_grad=clip)
            fused_cfg["optimizer"]["fused"] = True
            fused = ref(model, fused_cfg)
        out["mmengine"] = _Phase(wrapper.step, params)
        out["mmengine+fused"] = _Phase(fused.step, params)
    else:
        log("mmengine not installed: its variants are skipped")
    numel = sum(p.numel() for p in params)
    flat = torch.zeros(numel, requires_grad=True)
    flat_opt = getattr(torch.optim, opt_cfg["type"])([flat], fused=True,
                                                      **{k: v for k, v in opt_cfg.items() if k != "type"})

    def flat_limit() -> None:
        torch.linalg.vector_norm(flat.grad)
        flat_opt.step()

    out["flat limit"] = _Phase(flat_limit, [flat])
    return out


def run(model_name: str, optimizer: str, max_norm: float, width: float, repeats: int) -> dict[str, Any]:
    """Time every variant; return the figures."""
    spec = zoo.MODELS[model_name]
    model = zoo.build(model_name, width=width)
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{model_name} (width {width}): {tensors} trainable tensors, {numel / 1e6:.1f}M elements; "
        f"{optimizer}, clip_grad max_norm {max_norm}")
    variants = build(model, OPTIMIZER_CFGS[optimizer], spec.paramwise_cfg, max_norm)
    gen = torch.Generator().manual_seed(0)
    grads = {name: [[torch.randn(p.shape, generator=gen) * 1e-2 for p in v.params] for _ in range(2)]
             for name, v in variants.items()}

    def set_grads(name: str, k: int) -> None:
        for p, g in zip(variants[name].params, grads[name][k % 2]):
            p.grad = g.clone() if "torch" in name or "mmengine" in name else g  # torch clips in place

    times = interleaved_step_times(variants, set_grads, repeats, warmup=2)  # type: ignore[arg-type]
    return {"model": model_name, "optimizer": optimizer, "max_norm": max_norm, "width": width,
            "tensors": tensors, "numel": numel,
            "results": [{"impl": k, "phase_s": t} for k, t in times.items()]}


def report(fig: dict[str, Any]) -> bool:
    """Print one table; True when every target is met."""
    by = {r["impl"]: r["phase_s"] for r in fig["results"]}
    ours = by["fastopt phase"]
    print(f"\n{fig['model']} ({fig['tensors']} tensors, {fig['numel'] / 1e6:.1f}M elements), "
          f"{fig['optimizer']}, clip_grad max_norm {fig['max_norm']}: median time after backward")
    print(f"  {'variant':<24}{'time':>10}{'vs fastopt phase':>18}")
    for name, t in by.items():
        print(f"  {name:<24}{t * 1e3:8.2f}ms{t / ours:>17.2f}x")
    ok = True
    for base, need in TARGETS.items():
        if base not in by:
            continue
        got = by[base] / ours
        good = got >= need
        ok &= good
        what = f">= {need:.2f}x faster" if need >= 1 else f"at most {1 / need:.2f}x the time"
        print(f"  fastopt phase vs {base:<22} {got:5.2f}x  (target {what}: {'meets' if good else 'MISSES'})")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the phase benchmark; print the table (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cascade_mask_rcnn_swin_l", choices=sorted(zoo.MODELS))
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    ap.add_argument("--max-norm", type=float, default=0.1)
    ap.add_argument("--width", type=float, default=None, help="zoo width multiplier (default: ~30M elements)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = ap.parse_args(argv)
    info = machine()
    print(f"machine: {machine_line(info)}")
    width = args.width or DEFAULT_WIDTH.get(args.model, 0.25)
    fig = run(args.model, args.optimizer, args.max_norm, width, args.repeats)
    ok = report(fig)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "figures": [fig]}, fh, indent=2)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
