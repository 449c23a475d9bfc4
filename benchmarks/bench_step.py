"""Optimizer step time on detector-shaped models: fastopt vs mmengine-built and torch optimizers.

All variants step the same parameters, in one process, with repeats interleaved
(A B C ... A B C ...) and medians reported. Default mode: every step sees a
fresh set of gradient tensors (as after ``zero_grad(set_to_none=True)`` and a
backward), so no implementation can rely on cached gradient pointers.

    python benchmarks/bench_step.py                      # Swin-L Cascade Mask R-CNN, AdamW and SGD
    python benchmarks/bench_step.py --model vitdet_h --optimizer adamw
    python benchmarks/bench_step.py --scale              # per-tensor cost, 400 ... 100,000 tensors
    python benchmarks/bench_step.py --first              # the first step (state made), vs torch

Variants:
  mmengine            mmengine 0.10.7 build_optim_wrapper as is: one group per parameter
  mmengine+fused      the same with fused=True in the optimizer config
  torch fused merged  torch's fused optimizer on fastopt's merged groups
  fastopt             fastopt.build_optim_wrapper: merged groups, native multi-tensor kernel
  fastopt flat        fastopt with flat buffers (optimizer.use_flat_buffers())
  flat limit          torch's fused optimizer on ONE flat tensor of the same size: the practical limit
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import warnings
from typing import Any

import numpy as np
import torch

import fastopt
from fastopt import _kernels, _tiers
from fastopt.tools import zoo
from fastopt.tools.bench import (
    BYTES_PER_ELEMENT,
    OPTIMIZER_CFGS,
    interleaved_step_times,
    log,
    machine,
    machine_line,
    plot_scale,
    time_once,
)
from fastopt.tools.check import installed_reference

DEFAULT_WIDTH = {"cascade_mask_rcnn_swin_l": 0.35, "vitdet_h": 0.21}
# fastopt must be this many times faster than each baseline (<= 1: at most 1/x slower)
TARGETS = {
    "adamw": {"mmengine": 3.0, "mmengine+fused": 1.5, "torch fused merged": 1.3, "flat limit": 1 / 1.3},
    "sgd": {"mmengine": 2.5, "mmengine+fused": 1.3, "torch fused merged": 1.2, "flat limit": 1 / 1.3},
}
FLAT_TARGET = 1 / 1.1  # fastopt flat vs the flat limit
TINY_FLAT_TARGET = 1 / 1.5  # the same on a model of 5k tiny tensors
#: the scale table's targets: the extra time per tensor at every N, and list / one tensor at N
SCALE_EXTRA_TARGET_S = 0.3e-6
SCALE_RATIO_TARGETS = {400: 1.05, 4_000: 1.3}


def build_variants(model: torch.nn.Module, opt_cfg: dict, paramwise: dict | None
                   ) -> dict[str, torch.optim.Optimizer]:
    """Every optimizer variant over the same parameters."""
    cfg = dict(optimizer=dict(opt_cfg), paramwise_cfg=paramwise)
    variants: dict[str, torch.optim.Optimizer] = {}
    build_ref = installed_reference("mmengine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if build_ref is not None:
            variants["mmengine"] = build_ref(model, copy.deepcopy(cfg)).optimizer
            fused_cfg = copy.deepcopy(cfg)
            fused_cfg["optimizer"]["fused"] = True
            variants["mmengine+fused"] = build_ref(model, fused_cfg).optimizer
        else:
            log("mmengine not installed: its variants are skipped")
        ours = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer
    torch_cls = getattr(torch.optim, opt_cfg["type"])
    defaults = {k: v for k, v in opt_cfg.items() if k != "type"}
    merged = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in ours.param_groups]
    variants["torch fused merged"] = torch_cls(merged, fused=True, **defaults)
    variants["fastopt"] = ours
    if hasattr(ours, "use_flat_buffers"):
        flat_model = copy.deepcopy(model)
        flat = fastopt.build_optim_wrapper(flat_model, copy.deepcopy(cfg)).optimizer
        flat.use_flat_buffers()
        variants["fastopt flat"] = flat
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    limit = torch.zeros(numel, requires_grad=True)
    variants["flat limit"] = torch_cls([limit], fused=True, **defaults)
    return variants


def params_of(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters an optimizer steps."""
    return [p for g in opt.param_groups for p in g["params"]]


def run(model_name: str, optimizer: str, width: float, repeats: int) -> dict[str, Any]:
    """Time every variant on one model and optimizer; return the figures."""
    if model_name == "synthetic_5k":
        spec = zoo.ZooModel("synthetic_5k", zoo.synthetic, dict(norm_decay_mult=0.0), {}, "5k tiny tensors")
        model = zoo.synthetic(5000)
    else:
        spec = zoo.MODELS[model_name]
        model = zoo.build(model_name, width=width)
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{model_name} (width {width}): {tensors} trainable tensors, {numel / 1e6:.1f}M elements; "
        f"{optimizer}")
    variants = build_variants(model, OPTIMIZER_CFGS[optimizer], spec.paramwise_cfg)
    gen = torch.Generator().manual_seed(0)
    # Two gradient sets per variant, alternated: pointers change every step (default mode).
    grads: dict[str, list[list[torch.Tensor]]] = {}
    for name, opt in variants.items():
        if name == "fastopt flat":  # gradients live in the flat buffers
            for seg in opt.flat_buffers.segments:
                seg.grad_buf.normal_(0, 1e-3, generator=gen)
            continue
        grads[name] = [[torch.randn(p.shape, generator=gen) * 1e-3 for p in params_of(opt)] for _ in range(2)]

    def set_grads(name: str, k: int) -> None:
        opt = variants[name]
        if name == "fastopt flat":
            for seg in opt.flat_buffers.segments:  # what a backward does to the buffers' version
                seg.grad_buf[:1].add_(0)
            return
        for p, g in zip(params_of(opt), grads[name][k % 2]):
            p.grad = g

    times = interleaved_step_times(variants, set_grads, repeats, warmup=2)
    bytes_moved = numel * BYTES_PER_ELEMENT[optimizer]
    results = []
    for name, t in times.items():
        results.append({"impl": name, "step_s": t, "groups": len(variants[name].param_groups),
                        "gb_per_s": bytes_moved / t / 1e9})
    return {"model": model_name, "optimizer": optimizer, "width": width, "tensors": tensors,
            "numel": numel, "results": results}


def report(fig: dict[str, Any]) -> bool:
    """Print one table; True when every target is met."""
    by = {r["impl"]: r for r in fig["results"]}
    ours = by["fastopt"]["step_s"]
    print(f"\n{fig['model']} ({fig['tensors']} tensors, {fig['numel'] / 1e6:.1f}M elements), "
          f"{fig['optimizer']}, median step time")
    print(f"  {'variant':<20}{'step':>10}{'groups':>8}{'GB/s':>8}{'fastopt speed-up':>18}")
    for r in fig["results"]:
        print(f"  {r['impl']:<20}{r['step_s'] * 1e3:8.2f}ms{r['groups']:>8}{r['gb_per_s']:>8.1f}"
              f"{r['step_s'] / ours:>17.2f}x")
    ok = True
    for base, need in TARGETS[fig["optimizer"]].items():
        if base not in by or fig["model"] == "synthetic_5k":
            continue
        got = by[base]["step_s"] / ours
        good = got >= need
        ok &= good
        what = f">= {need:.2f}x" if need >= 1 else f"within {1 / need:.2f}x"
        print(f"  fastopt vs {base:<20} {got:5.2f}x  (target {what}: {'meets' if good else 'MISSES'})")
    if "fastopt flat" in by:
        got = by["flat limit"]["step_s"] / by["fastopt flat"]["step_s"]
        need = TINY_FLAT_TARGET if fig["model"] == "synthetic_5k" else FLAT_TARGET
        good = got >= need
        ok &= good
        print(f"  fastopt flat vs flat limit    {got:5.2f}x  (target within {1 / need:.2f}x: "
              f"{'meets' if good else 'MISSES'})")
    return ok


def _fused_or_foreach(kwargs: dict[str, Any], cls: type = torch.optim.AdamW) -> dict[str, Any]:
    """torch's arguments for ``cls`` (AdamW) with ``fused=True`` where this torch steps it fused
    on the CPU (AdamW from 2.4 on), else ``foreach=True``."""
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    try:
        cls([p], **kwargs, fused=True).step()
    except (RuntimeError, ValueError):
        return dict(kwargs, foreach=True)
    return dict(kwargs, fused=True)


class KernelOnly:
    """The native kernel alone over a fastopt optimizer's pointer table as its first step left
    it, with no tensor read (``step()`` runs the kernel only): what any step over the same list
    costs for the memory the tensors lie in, before a per-step read or check."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        opt.step()
        cache = opt._fastopt_caches  # type: ignore[attr-defined]
        plan, algorithm = cache.plan, opt.algorithm  # type: ignore[attr-defined]
        found = _kernels.gather(plan)
        assert found is not None and found[2] is None, "every parameter has a gradient, as the plan has it"
        ptrs = plan.ptrs.copy()
        ptrs[:, algorithm.column("grad")] = found[1]
        flags, hyper = _kernels.rows_of(_tiers.hyper_table(opt, cache), plan.group_of)
        self.opt = opt  # (keeps the parameters, gradients and state the table points to)
        self.run = algorithm.run
        self.args = (ptrs, plan.numels, plan.dtypes, flags, hyper, 0.0, 1.0)

    def step(self) -> None:
        """One kernel call over the table."""
        self.run(*self.args)


class KernelContiguous(KernelOnly):
    """The native kernel alone over copies of the same list laid back to back: one float32 buffer
    per array of the table (parameters, gradients, each state tensor), each tensor's slice at the
    offset of the sizes before it, the step counters the list's own. Against "kernel only" (the
    same sizes where torch allocated them), the part of the kernel's extra time per tensor that
    comes from where the list's tensors lie rather than from their number."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        super().__init__(opt)
        ptrs, numels = self.args[0], self.args[1]
        algorithm = opt.algorithm  # type: ignore[attr-defined]
        params = [p for g in opt.param_groups for p in g["params"]]
        offsets = np.concatenate([[0], np.cumsum(numels)[:-1]]).astype(np.uint64)
        self.buffers: dict[str, torch.Tensor] = {}
        for col, key in enumerate(algorithm.columns):
            if key == "step" or not ptrs[:, col].any():
                continue  # (the step counters stay where they are; a column of no array)
            found = [p if key == "param" else p.grad if key == "grad" else opt.state[p][key] for p in params]
            if any(t.dtype != torch.float32 for t in found):
                raise ValueError("KernelContiguous lays out float32 tensors only")
            buf = torch.cat([t.detach().reshape(-1) for t in found])  # (the list's values)
            ptrs[:, col] = np.uint64(buf.data_ptr()) + offsets * np.uint64(buf.element_size())
            self.buffers[key] = buf


def state_made_per_parameter(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``opt`` after a first step that made its state one parameter at a time, each tensor's
    metadata between the elements of those before it (as before ``_kernels.premade_state``
    made a step's state together): against "fastopt, list", what the state's layout costs."""
    made_together = _kernels.premade_state
    _kernels.premade_state = lambda *args: {}
    try:
        opt.step()
    finally:
        _kernels.premade_state = made_together
    return opt


SCALE_COUNTS = (400, 4_000, 40_000, 100_000)
DIRECT_READS = _kernels.GATHER_METHODS  # what this torch allows (see fastopt/_kernels.py)
METHODS_ONLY = (*DIRECT_READS[:3], 0, (), None, None, _kernels.NO_SHIM, _kernels.NO_LAYOUT)
SCALE_ELEMENTS = 8_000_000


def repeats_at(tensors: int, repeats: int) -> int:
    """Repeats of the scale table's row of ``tensors`` tensors: at least 101 up to 400 tensors and
    41 up to 4,000, whose steps are short and whose differences are a few percent of them (the
    middle half of one row's per-repeat differences spans about 1 us a tensor at 400: a row of
    41 moved by 0.5 us a tensor between runs), ``repeats`` beyond."""
    if tensors <= 400:
        return max(repeats, 101)
    if tensors <= 4_000:
        return max(repeats, 41)
    return repeats


def scale(counts: tuple[int, ...] = SCALE_COUNTS, elements: int = SCALE_ELEMENTS,
          repeats: int = 7) -> list[dict[str, Any]]:
    """The step's per-tensor cost: AdamW over ``elements`` elements split into N equal tensors,
    fastopt's step over the list against fastopt's step over one tensor of the same size, and
    fastopt's flat-buffer mode and torch's fused AdamW over the list, medians of interleaved
    repeats (``repeats_at``; the order rotated by one each repeat, so that every variant follows
    every other as often: the list step no longer always follows torch's fused step, nor the
    one-tensor step the flat one); per N, the times and the extra time per tensor,
    ``(list - one) / N``, with the middle half of its per-repeat values (the quartiles of the
    list step less the one-tensor step of the same repeat, over N): how far the machine moves
    the row. The flat
    variant's gradients are accumulated into in place before each step (untimed), as a
    backward does. "methods only" is fastopt's list step reading every tensor through
    torch.Tensor's methods, as on torch releases without the C-level address reader (before
    2.5) or with ``FASTOPT_DIRECT_READS=0``. "kernel only" is the native kernel alone over the
    list (``KernelOnly``): the part of the extra time per tensor that the memory the list's
    tensors lie in costs any step, before a tensor is read (against the one-tensor step, whose time
    includes the step's fixed Python work); "contiguous" the same kernel over copies of the list
    laid back to back (``KernelContiguous``), and "layout" the difference of the two kernels per
    tensor, ``(kernel only - contiguous) / N``: what the places torch gave the list's tensors cost
    the kernel. "from backward" is fastopt's list
    step with gradients a backward left, as a training loop has them: ``zero_grad()`` (to None)
    and a backward before each step (untimed), so each step reads new gradients that have no
    Python object yet. "state per parameter" is fastopt's list step over state its first step
    made one parameter at a time (``state_made_per_parameter``), where fastopt's step makes the
    state of all parameters together (``_kernels.premade_state``)."""
    kwargs = {k: v for k, v in OPTIMIZER_CFGS["adamw"].items() if k != "type"}
    torch_kwargs = _fused_or_foreach(kwargs)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in counts:
        numel = elements // n
        names = ("fastopt, list", "methods only, list", "kernel only, list", "kernel only, contiguous",
                 "fastopt flat, list", "torch fused, list", "from backward, list",
                 "state per parameter, list")
        lists = {name: [torch.nn.Parameter(torch.zeros(numel)) for _ in range(n)] for name in names}
        one = [torch.nn.Parameter(torch.zeros(numel * n))]
        for ps in (*lists.values(), one):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        variants: dict[str, Any] = {
            "fastopt, list": fastopt.optim.AdamW(lists["fastopt, list"], **kwargs),
            "methods only, list": fastopt.optim.AdamW(lists["methods only, list"], **kwargs),
            "kernel only, list": KernelOnly(fastopt.optim.AdamW(lists["kernel only, list"], **kwargs)),
            "kernel only, contiguous": KernelContiguous(
                fastopt.optim.AdamW(lists["kernel only, contiguous"], **kwargs)),
            "fastopt flat, list": fastopt.optim.AdamW(lists["fastopt flat, list"], **kwargs),
            "fastopt, one tensor": fastopt.optim.AdamW(one, **kwargs),
            "from backward, list": fastopt.optim.AdamW(lists["from backward, list"], **kwargs),
            "state per parameter, list": state_made_per_parameter(
                fastopt.optim.AdamW(lists["state per parameter, list"], **kwargs)),
            "torch fused, list": torch.optim.AdamW(lists["torch fused, list"], **torch_kwargs),
        }
        variants["fastopt flat, list"].use_flat_buffers()  # type: ignore[attr-defined]

        def accumulate(name: str, r: int, flat: list[torch.nn.Parameter] = lists["fastopt flat, list"],
                       backward: Any = variants["from backward, list"]) -> None:
            _kernels.GATHER_METHODS = METHODS_ONLY if name == "methods only, list" else DIRECT_READS
            if name == "from backward, list":
                backward.zero_grad(set_to_none=True)
                params = backward.param_groups[0]["params"]
                torch.stack([p.sum() for p in params]).mul(1e-3).sum().backward()
            if name == "fastopt flat, list":
                with torch.no_grad():
                    for p in flat:
                        p.grad.add_(0.0)  # type: ignore[union-attr]

        samples: dict[str, list[float]] = {}
        try:
            times = interleaved_step_times(variants, accumulate, repeats_at(n, repeats), warmup=1,
                                           progress=lambda msg: None, rotate=True, samples=samples)
        finally:
            _kernels.GATHER_METHODS = DIRECT_READS
        assert variants["fastopt flat, list"].fastopt_tier == "flat"  # type: ignore[attr-defined]
        listed, single = times["fastopt, list"], times["fastopt, one tensor"]
        q1, q3 = quartiles([a - b for a, b in zip(samples["fastopt, list"], samples["fastopt, one tensor"])])
        rows.append({"tensors": n, "elements": elements, "list_s": listed, "one_s": single,
                     "ratio": listed / single,
                     "extra_per_tensor_s": (listed - single) / n,
                     "extra_q1_per_tensor_s": q1 / n, "extra_q3_per_tensor_s": q3 / n,
                     "flat_list_s": times["fastopt flat, list"],
                     "flat_extra_per_tensor_s": (times["fastopt flat, list"] - single) / n,
                     "torch_fused_list_s": times["torch fused, list"],
                     "methods_only_list_s": times["methods only, list"],
                     "methods_only_extra_per_tensor_s": (times["methods only, list"] - single) / n,
                     "kernel_only_list_s": times["kernel only, list"],
                     "kernel_only_extra_per_tensor_s": (times["kernel only, list"] - single) / n,
                     "kernel_contiguous_s": times["kernel only, contiguous"],
                     "layout_per_tensor_s":
                         (times["kernel only, list"] - times["kernel only, contiguous"]) / n,
                     "backward_list_s": times["from backward, list"],
                     "backward_extra_per_tensor_s": (times["from backward, list"] - single) / n,
                     "per_parameter_list_s": times["state per parameter, list"],
                     "per_parameter_extra_per_tensor_s": (times["state per parameter, list"] - single) / n,
                     "direct_reads": bool(DIRECT_READS[3])})
        log(f"  {n:,} tensors done")
    return rows


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles of ``values`` (one value: itself twice)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def scale_table(rows: list[dict[str, Any]]) -> str:
    """The ``scale`` rows as a table."""
    elements = rows[0].get("elements", SCALE_ELEMENTS) if rows else SCALE_ELEMENTS
    lines = [f"AdamW, {elements:,} elements split into N equal tensors (medians, one run; the middle half: "
             "of the per-repeat extra)",
             f"{'tensors':>9} {'fastopt, list':>14} {'one tensor':>11} {'list / one':>11} "
             f"{'extra per tensor':>17} {'middle half':>16} {'from backward':>14} {'its extra':>10} "
             f"{'methods only':>13} {'its extra':>10} {'kernel only':>12} "
             f"{'its extra':>10} {'contiguous':>11} {'layout':>10} {'state per param':>16} {'its extra':>10} "
             f"{'flat, list':>11} {'flat extra':>11} {'torch fused, list':>18}"]
    for r in rows:
        lines.append(f"{r['tensors']:>9,} {r['list_s'] * 1e3:>11.2f} ms {r['one_s'] * 1e3:>8.2f} ms "
                     f"{r['ratio']:>11.2f} {r['extra_per_tensor_s'] * 1e6:>14.2f} us "
                     f"{r['extra_q1_per_tensor_s'] * 1e6:>6.2f} - "
                     f"{r['extra_q3_per_tensor_s'] * 1e6:>5.2f} us "
                     f"{r['backward_list_s'] * 1e3:>11.2f} ms "
                     f"{r['backward_extra_per_tensor_s'] * 1e6:>7.2f} us "
                     f"{r['methods_only_list_s'] * 1e3:>10.2f} ms "
                     f"{r['methods_only_extra_per_tensor_s'] * 1e6:>7.2f} us "
                     f"{r['kernel_only_list_s'] * 1e3:>9.2f} ms "
                     f"{r['kernel_only_extra_per_tensor_s'] * 1e6:>7.2f} us "
                     f"{r['kernel_contiguous_s'] * 1e3:>8.2f} ms "
                     f"{r['layout_per_tensor_s'] * 1e6:>7.2f} us "
                     f"{r['per_parameter_list_s'] * 1e3:>13.2f} ms "
                     f"{r['per_parameter_extra_per_tensor_s'] * 1e6:>7.2f} us "
                     f"{r['flat_list_s'] * 1e3:>8.2f} ms {r['flat_extra_per_tensor_s'] * 1e6:>8.2f} us "
                     f"{r['torch_fused_list_s'] * 1e3:>15.1f} ms")
    if rows and not rows[0].get("direct_reads", True):
        lines.append("(this torch has no C-level address reader: both fastopt list columns read through "
                     "torch.Tensor's methods)")
    return "\n".join(lines)


def scale_verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """Each target of the scale table met by ``rows`` or not, in words: the extra time per tensor
    at every N (``SCALE_EXTRA_TARGET_S``) and list / one tensor where a row has a ratio target."""
    out = []
    for r in rows:
        n, extra = r["tensors"], r["extra_per_tensor_s"]
        out.append((f"{n:>9,} tensors: extra per tensor {extra * 1e6:5.2f} us "
                    f"(target at most {SCALE_EXTRA_TARGET_S * 1e6:.2f} us)", extra <= SCALE_EXTRA_TARGET_S))
        if n in SCALE_RATIO_TARGETS:
            need = SCALE_RATIO_TARGETS[n]
            out.append((f"{n:>9,} tensors: list / one tensor {r['ratio']:5.2f} (target at most {need:.2f})",
                        r["ratio"] <= need))
    return out


FIRST_COUNTS = (400, 4_000, 100_000)


def first_steps(counts: tuple[int, ...] = FIRST_COUNTS, elements: int = SCALE_ELEMENTS,
                repeats: int = 5) -> list[dict[str, Any]]:
    """The first step, the one that makes the optimizer's state: ``elements`` elements split
    into N equal tensors, AdamW and SGD with momentum, fastopt against torch's fused and default
    (``foreach=False``) step; every repeat a new list, gradients and optimizer for each (untimed,
    earlier garbage collected), the variants' order rotated by one each repeat; medians."""
    gen = torch.Generator().manual_seed(0)
    cfgs = {name: {k: v for k, v in OPTIMIZER_CFGS[name].items() if k != "type"} for name in ("adamw", "sgd")}
    classes = {"adamw": (fastopt.optim.AdamW, torch.optim.AdamW), "sgd": (fastopt.optim.SGD, torch.optim.SGD)}
    rows = []
    for n in counts:
        for name, kwargs in cfgs.items():
            ours, theirs = classes[name]
            variants = {"fastopt": lambda ps, k=kwargs, c=ours: c(ps, **k),
                        "torch fused": lambda ps, k=kwargs, c=theirs: c(ps, **_fused_or_foreach(k, c)),
                        "torch default": lambda ps, k=kwargs, c=theirs: c(ps, foreach=False, **k)}
            times: dict[str, list[float]] = {k: [] for k in variants}
            names = list(variants)
            for r in range(repeats):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    params = [torch.nn.Parameter(torch.randn(elements // n, generator=gen)) for _ in range(n)]
                    for p in params:
                        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
                    opt = variants[k](params)
                    dt, _ = time_once(opt.step)
                    times[k].append(dt)
                    del opt, params
            med = {k: float(np.median(v)) for k, v in times.items()}
            rows.append({"tensors": n, "optimizer": name, "fastopt_s": med["fastopt"],
                         "torch_fused_s": med["torch fused"], "torch_default_s": med["torch default"],
                         "fused_vs_fastopt": med["torch fused"] / med["fastopt"],
                         "default_vs_fastopt": med["torch default"] / med["fastopt"]})
            log(f"  first step, {n:,} tensors, {name}: done")
    return rows


def first_table(rows: list[dict[str, Any]]) -> str:
    """The ``first_steps`` rows as a table."""
    lines = [f"The first step (state made), {SCALE_ELEMENTS:,} elements split into N equal tensors "
             "(medians, one run)",
             f"{'tensors':>9} {'optimizer':>9} {'fastopt':>11} {'torch fused':>12} {'torch default':>14} "
             f"{'fastopt faster: than fused':>27} {'than default':>13}"]
    for r in rows:
        lines.append(f"{r['tensors']:>9,} {r['optimizer']:>9} {r['fastopt_s'] * 1e3:>8.1f} ms "
                     f"{r['torch_fused_s'] * 1e3:>9.1f} ms {r['torch_default_s'] * 1e3:>11.1f} ms "
                     f"{r['fused_vs_fastopt']:>26.2f}x {r['default_vs_fastopt']:>12.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the step benchmark; print tables (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cascade_mask_rcnn_swin_l",
                    choices=[*sorted(zoo.MODELS), "synthetic_5k"])
    ap.add_argument("--tiny", action="store_true",
                    help="also run the 5k-tiny-tensor model (flat-mode target)")
    ap.add_argument("--optimizer", default="both", choices=["adamw", "sgd", "both"])
    ap.add_argument("--width", type=float, default=None, help="zoo width multiplier (default: ~30M elements)")
    ap.add_argument("--scale", action="store_true",
                    help="only the per-tensor cost table: 400 ... 100,000 tensors of 8M elements in all")
    ap.add_argument("--first", action="store_true",
                    help="only the first step (state made): 400 ... 100,000 tensors, AdamW and SGD, vs torch")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--plot", metavar="PNG", help="with --scale: the step times and the extra time per "
                    "tensor (with each row's middle half) against the tensor count")
    ap.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = ap.parse_args(argv)
    if args.plot and not args.scale:
        ap.error("--plot draws the --scale table: pass --scale with it")
    if args.first or args.scale:  # one table only
        info = machine()
        print(f"machine: {machine_line(info)}")
        key, rows, table = (("first", first_steps(repeats=min(args.repeats, 5)), first_table) if args.first
                            else ("scale", scale(repeats=min(args.repeats, 7)), scale_table))
        print(table(rows))
        ok = True
        if args.scale:
            for line, good in scale_verdicts(rows):
                ok &= good
                print(f"  {line}: {'meets' if good else 'MISSES'}")
            if args.plot:
                plot_scale(rows, args.plot, SCALE_EXTRA_TARGET_S)
                print(f"plot: {args.plot}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": info, key: rows}, fh, indent=2)
        return 0 if ok or not args.check else 1
    width = args.width or DEFAULT_WIDTH.get(args.model, 0.25)
    optimizers = ["adamw", "sgd"] if args.optimizer == "both" else [args.optimizer]
    info = machine()
    print(f"machine: {machine_line(info)}")
    figures = [run(args.model, opt, width, args.repeats) for opt in optimizers]
    if args.tiny:
        figures += [run("synthetic_5k", opt, 1.0, max(args.repeats, 31)) for opt in optimizers]
    ok = all([report(f) for f in figures])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "figures": figures}, fh, indent=2)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
