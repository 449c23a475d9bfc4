"""Side-by-side construction and step timings, shared by ``fastopt bench`` and benchmarks/.

Every implementation that is installed is measured in one process on the same model and
config, with repeats interleaved (A B C A B C ...) and medians reported, so noise on a
shared machine hits all of them alike. The JSON layout is documented in docs/cli.md.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn

from . import zoo
from ._compat import ensure_torchvision

#: fp32 bytes read + written per element by one step (AdamW: p, g, m, v in; p, m, v out)
BYTES_PER_ELEMENT = {"adamw": 7 * 4, "sgd": 5 * 4}
OPTIMIZER_CFGS = {
    "adamw": dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    "sgd": dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4),
}


def log(msg: str) -> None:
    """Progress on stderr, so tables and JSON on stdout stay clean."""
    print(msg, file=sys.stderr, flush=True)


#: x86 vector extensions that decide which of fastopt's kernels (and torch's) run
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl")


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPU model, vector extensions, cores, torch's threads, the
    torch version and the kernel build fastopt picked."""
    from ._core import _C

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"cpu": cpu, "isa": [f for f in _ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "fastopt_kernels": _C.cpu_isa() if _C is not None else "none (pure Python)"}


def machine_line(info: dict[str, Any] | None = None) -> str:
    """``machine()`` in one line, for the head of a benchmark's output."""
    m = info or machine()
    return (f"{m['cpu']} ({' '.join(m['isa']) or 'no AVX'}), {m['cores']} cores; torch {m['torch']} "
            f"with {m['torch_threads']} threads; fastopt kernels: {m['fastopt_kernels']}")


def time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call, with earlier garbage collected first."""
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved_step_times(optimizers: dict[str, torch.optim.Optimizer],
                           set_grads: Callable[[str, int], None], repeats: int, warmup: int = 1,
                           progress: Callable[[str], None] = log) -> dict[str, float]:
    """Median step time of each optimizer; repeats interleaved, ``set_grads(name, r)`` before
    every step (outside the timing), ``warmup`` untimed steps first (state creation)."""
    for k, opt in optimizers.items():
        for r in range(warmup):
            set_grads(k, r)
            opt.step()
    steps: dict[str, list[float]] = {k: [] for k in optimizers}
    for r in range(repeats):
        for k, opt in optimizers.items():
            set_grads(k, r)
            start = time.perf_counter()
            opt.step()
            steps[k].append(time.perf_counter() - start)
        progress(f"  step: repeat {r + 1}/{repeats}")
    return {k: statistics.median(v) for k, v in steps.items()}


def mmengine_builder() -> Callable | None:
    """mmengine's ``build_optim_wrapper`` with its per-parameter logging silenced, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from mmengine.logging import MMLogger
            from mmengine.optim import build_optim_wrapper
        except ImportError:
            return None
    # one log line per parameter (warnings for frozen ones): silencing only makes it faster
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    return build_optim_wrapper


def mmcv_builder() -> Callable | None:
    """mmcv 1.x's ``build_optimizer`` (torchvision stubbed, as mmcv.runner imports it), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ensure_torchvision()
            from mmcv.runner import build_optimizer
        except ImportError:
            return None
    return build_optimizer


def width_for(name: str, numel: float) -> float:
    """The zoo width at which ``name`` holds about ``numel`` parameters (found on the meta device)."""
    def count(width: float) -> int:
        with torch.device("meta"):
            return zoo.count_numel(zoo.build(name, width=width))

    lo, hi = 1e-3, 1.0
    if count(hi) <= numel:
        return hi
    for _ in range(12):  # bisection on log(width); counts grow monotonically with width
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if count(mid) < numel else (lo, mid)
    return round(hi, 4)


def _paramwise(name: str) -> dict | None:
    return zoo.MODELS[name].paramwise_cfg if name in zoo.MODELS else dict(norm_decay_mult=0.0)


def compare(name: str, optimizer: str = "adamw", width: float | None = None, numel: float = 30e6,
            repeats: int = 5, progress: Callable[[str], None] = log) -> dict[str, Any]:
    """Construction and step time of every available implementation on one zoo model.

    Returns {"model", "optimizer", "width", "tensors", "numel", "results": [{"impl",
    "construct_s", "step_s", "groups", "gb_per_s"}, ...]} (construct_s is null for the
    flat-tensor limit, which needs no construction from a config).
    """
    import fastopt

    width = width_for(name, numel) if width is None else width
    progress(f"building {name} at width {width} ...")
    model = zoo.build(name, width=width)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_elem = sum(p.numel() for p in trainable)
    opt_cfg = OPTIMIZER_CFGS[optimizer]
    engine_cfg = dict(optimizer=dict(opt_cfg), paramwise_cfg=_paramwise(name))
    mmcv_cfg = dict(opt_cfg, paramwise_cfg=_paramwise(name))

    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "fastopt": lambda: fastopt.build_optim_wrapper(model, copy.deepcopy(engine_cfg)).optimizer}
    ref = mmengine_builder()
    if ref is not None:
        builders["mmengine"] = lambda: ref(model, copy.deepcopy(engine_cfg)).optimizer
        fused_cfg = copy.deepcopy(engine_cfg)
        fused_cfg["optimizer"]["fused"] = True
        builders["mmengine+fused"] = lambda: ref(model, copy.deepcopy(fused_cfg)).optimizer
    else:
        progress("mmengine not installed: skipping it")
    ref_mmcv = mmcv_builder()
    if ref_mmcv is not None:
        builders["mmcv"] = lambda: ref_mmcv(model, copy.deepcopy(mmcv_cfg))
    else:
        progress("mmcv 1.x not installed: skipping it")
    flat = torch.zeros(n_elem, requires_grad=True)
    torch_cls = getattr(torch.optim, opt_cfg["type"])
    limit_kwargs = {k: v for k, v in opt_cfg.items() if k != "type"}

    construct: dict[str, list[float]] = {k: [] for k in builders}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, build in builders.items():  # warm-up (imports, registries)
            optimizers[k] = build()
        for r in range(repeats):
            for k, build in builders.items():
                dt, built = time_once(build)
                construct[k].append(dt)
                optimizers[k] = built
            progress(f"  construction: repeat {r + 1}/{repeats}")
    optimizers["torch flat limit"] = torch_cls([flat], fused=True, **limit_kwargs)

    # Default mode: fresh gradient tensors every step (two sets, alternated).
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen) * 1e-3 for p in trainable] for _ in range(2)]
    flat_grads = [torch.randn(n_elem, generator=gen) * 1e-3 for _ in range(2)]

    def set_grads(k: str, r: int) -> None:
        if k == "torch flat limit":
            flat.grad = flat_grads[r % 2]
            return
        for p, g in zip(trainable, grads[r % 2]):
            p.grad = g

    steps = interleaved_step_times(optimizers, set_grads, repeats, warmup=1, progress=progress)
    results = []
    for k, opt in optimizers.items():
        step_s = steps[k]
        results.append({"impl": k, "construct_s": statistics.median(construct[k]) if k in construct else None,
                        "step_s": step_s, "groups": len(opt.param_groups),
                        "gb_per_s": n_elem * BYTES_PER_ELEMENT[optimizer] / step_s / 1e9})
    return {"model": name, "optimizer": optimizer, "width": width, "tensors": len(trainable),
            "numel": n_elem, "machine": machine(), "results": results}


def scaling(sizes: list[int], reference_up_to: int = 5000, repeats: int = 3,
            progress: Callable[[str], None] = log) -> list[dict[str, Any]]:
    """Construction time against tensor count on synthetic models: fastopt at every size,
    mmengine (quadratic) up to ``reference_up_to`` tensors."""
    import fastopt

    cfg = dict(optimizer=dict(OPTIMIZER_CFGS["adamw"]),
               paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                                  custom_keys={"stages.0": dict(lr_mult=0.1)}))
    ref = mmengine_builder()
    rows = []
    for n in sizes:
        model = zoo.synthetic(n)
        impls: dict[str, Callable[[], Any]] = {"fastopt": lambda m=model: fastopt.build_optim_wrapper(m, cfg)}
        if ref is not None and n <= reference_up_to:
            impls["mmengine"] = lambda m=model: ref(m, copy.deepcopy(cfg))
        for impl, fn in impls.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
                samples = [time_once(fn)[0] for _ in range(repeats if impl == "fastopt" else 1)]
            t = statistics.median(samples)
            rows.append({"impl": impl, "tensors": n, "construct_s": t})
            progress(f"  {impl:>8} {n:>9,} tensors: {t * 1e3:10.1f} ms")
        del model, impls
    return rows


def plot(report: dict[str, Any], scale_rows: list[dict[str, Any]], path: str) -> None:
    """PNG: construction time vs tensor count (log-log) and step time bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for impl, style in (("fastopt", "o-"), ("mmengine", "s-")):
        pts = [(r["tensors"], r["construct_s"]) for r in scale_rows if r["impl"] == impl]
        if pts:
            xs, ys = zip(*pts)
            ax1.loglog(xs, ys, style, label=impl)
    for impl, power, style in (("fastopt", 1, ":"), ("mmengine", 2, "--")):
        pts = sorted((r["tensors"], r["construct_s"]) for r in scale_rows if r["impl"] == impl)
        if pts:  # a guide through the first point: linear for fastopt, quadratic for mmengine
            (x0, y0) = pts[0]
            xs = sorted({r["tensors"] for r in scale_rows})
            ax1.loglog(xs, [y0 * (x / x0) ** power for x in xs], style, color="gray", alpha=0.6,
                       label="linear" if power == 1 else "quadratic")
    ax1.set_xlabel("parameter tensors")
    ax1.set_ylabel("construction time (s)")
    ax1.set_title("Optimizer construction (synthetic models)")
    ax1.legend()
    ax1.grid(True, which="both", alpha=0.3)
    names = [r["impl"] for r in report["results"]]
    values = [r["step_s"] * 1e3 for r in report["results"]]
    bars = ax2.bar(names, values, color=["tab:blue" if n == "fastopt" else "tab:gray" for n in names])
    ax2.bar_label(bars, fmt="%.1f")
    ax2.set_ylabel("step time (ms)")
    ax2.set_title(f"{report['optimizer']} step, {report['model']} "
                  f"({report['tensors']} tensors, {report['numel'] / 1e6:.1f}M)")
    ax2.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def count_full(name: str) -> tuple[int, int]:
    """(tensors, parameters) of a zoo model at full width, counted on the meta device."""
    with torch.device("meta"):
        model = zoo.build(name, width=1.0)
    return zoo.count_tensors(model), zoo.count_numel(model)


def profile(model: nn.Module, cfg: dict, repeats: int = 5) -> dict[str, Any]:
    """Grouping cost of ``cfg`` on ``model``: median build time (ms), group and tensor counts."""
    import fastopt

    build = fastopt.build_optim_wrapper if "optimizer" in cfg else fastopt.build_optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = build(model, copy.deepcopy(cfg))
        samples = [time_once(lambda: build(model, copy.deepcopy(cfg)))[0] for _ in range(repeats)]
    opt = getattr(built, "optimizer", built)
    return {"build_ms": statistics.median(samples) * 1e3, "groups": len(opt.param_groups),
            "tensors": sum(len(g["params"]) for g in opt.param_groups)}


class _Phase:
    """Something with ``step()`` for the interleaved timer, and the parameters it steps."""

    def __init__(self, step: Callable[[], Any], params: list[torch.Tensor]) -> None:
        self.step = step
        self.params = params


def _amp_variants(model: nn.Module, cfg: dict, clip: dict, params: list[torch.Tensor]) -> dict[str, _Phase]:
    """With a loss scale (gradients as a scaled fp16 backward leaves them): fastopt's fused
    phase, and GradScaler's unscale_ + clip_grad_norm_ + fastopt's step."""
    import fastopt

    fused = fastopt.AmpOptimWrapper(fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer,
                                    loss_scale=1024.0, clip_grad=clip)
    opt = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.zeros(()))  # creates the scale tensor, as the first backward would

    def unscale_clip_step() -> None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, **clip)
        scaler.step(opt)
        scaler.update(1024.0)

    return {"fastopt amp phase": _Phase(fused.step, params),
            "fastopt + torch unscale/clip": _Phase(unscale_clip_step, params)}


def _phase_variants(model: nn.Module, opt_cfg: dict, paramwise: dict | None,
                    max_norm: float, amp: bool = False) -> dict[str, _Phase]:
    """Every variant of the clipped optimizer phase over the same parameters (the flat limit
    over one flat tensor of the same size); with ``amp`` also the loss-scaled ones."""
    import fastopt

    clip = dict(max_norm=max_norm, norm_type=2)
    cfg = dict(optimizer=dict(opt_cfg), paramwise_cfg=paramwise)
    out: dict[str, _Phase] = {}
    plain = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer
    params = [p for g in plain.param_groups for p in g["params"]]
    out["fastopt step"] = _Phase(plain.step, params)
    if amp:
        out.update(_amp_variants(model, cfg, clip, params))
    phase = fastopt.OptimWrapper(fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer,
                                 clip_grad=clip)
    out["fastopt phase"] = _Phase(phase.step, params)
    clip_then_step = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer

    def torch_clip_then_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, **clip)
        clip_then_step.step()

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
    flat = torch.zeros(sum(p.numel() for p in params), requires_grad=True)
    flat_opt = getattr(torch.optim, opt_cfg["type"])([flat], fused=True,
                                                      **{k: v for k, v in opt_cfg.items() if k != "type"})

    def flat_limit() -> None:
        torch.linalg.vector_norm(flat.grad)
        flat_opt.step()

    out["flat limit"] = _Phase(flat_limit, [flat])
    return out


def phase_compare(name: str, optimizer: str = "adamw", max_norm: float = 0.1, width: float | None = None,
                  numel: float = 30e6, repeats: int = 15, amp: bool = False,
                  progress: Callable[[str], None] = log) -> dict[str, Any]:
    """The time after backward with gradient clipping, every variant on one zoo model: fastopt's
    plain step (the yardstick), its clipped phase, fastopt's step after torch's
    ``clip_grad_norm_``, mmengine's wrapper with ``clip_grad`` (as is and ``fused=True``) and
    the flat-tensor limit; with ``amp`` (a fixed loss scale of 1024) also fastopt's fused
    unscale + clip + step and GradScaler's ``unscale_`` + ``clip_grad_norm_`` + fastopt's step.
    Returns {"model", "optimizer", "max_norm", "amp", "width", "tensors", "numel", "machine",
    "results": [{"impl", "phase_s"}, ...]}."""
    width = width_for(name, numel) if width is None else width
    progress(f"building {name} at width {width} ...")
    model = zoo.build(name, width=width)
    trainable = [p for p in model.parameters() if p.requires_grad]
    variants = _phase_variants(model, OPTIMIZER_CFGS[optimizer], _paramwise(name), max_norm, amp)
    gen = torch.Generator().manual_seed(0)
    grads = {k: [[torch.randn(p.shape, generator=gen) * 1e-2 for p in v.params] for _ in range(2)]
             for k, v in variants.items()}

    def set_grads(k: str, r: int) -> None:
        # torch clips (and unscales) in place, the fused AMP phase stores unscaled gradients
        fresh = "torch" in k or "mmengine" in k or "amp" in k
        for p, g in zip(variants[k].params, grads[k][r % 2]):
            p.grad = g.clone() if fresh else g

    times = interleaved_step_times(variants, set_grads, repeats, warmup=2, progress=progress)  # type: ignore[arg-type]
    return {"model": name, "optimizer": optimizer, "max_norm": max_norm, "amp": amp, "width": width,
            "tensors": len(trainable), "numel": sum(p.numel() for p in trainable), "machine": machine(),
            "results": [{"impl": k, "phase_s": t} for k, t in times.items()]}


def phase_table(fig: dict[str, Any]) -> str:
    """``phase_compare``'s figures as a table: each variant's median and how many times the
    fastopt phase's time it takes."""
    by = {r["impl"]: r["phase_s"] for r in fig["results"]}
    ours = by["fastopt phase"]
    lines = [f"{fig['model']} (width {fig['width']}): {fig['tensors']:,} tensors, {fig['numel'] / 1e6:.1f}M "
             f"parameters; {fig['optimizer']}, clip_grad max_norm {fig['max_norm']}: "
             "median time after backward",
             f"  {'variant':<30}{'time':>10}{'vs fastopt phase':>18}"]
    lines += [f"  {name:<30}{t * 1e3:8.2f}ms{t / ours:>17.2f}x" for name, t in by.items()]
    return "\n".join(lines)
