"""Side-by-side construction and step timings, shared by ``fastopt bench`` and benchmarks/.

Every implementation that is installed is measured in one process on the same model and
config, with repeats interleaved (A B C A B C ...) and medians reported, so noise on a
shared machine hits all of them alike. The model and its optimizer config come from any
source ``fastopt.tools.sources`` resolves (a config file, ``timm:NAME``, a bundled model ...); steps
run on the CPU or on a CUDA device (timed with CUDA events, peak memory recorded). The JSON
layout is documented in docs/cli.md.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._report import held_warnings
from .._torch_compat import grad_scaler
from ..builder import config_api
from . import zoo
from .check import installed_reference, quiet_reference
from .sources import Source, SourceError, log, resolve

#: fp32 bytes read + written per element by one step (AdamW: p, g, m, v in; p, m, v out)
BYTES_PER_ELEMENT = {"adamw": 7 * 4, "adam": 7 * 4, "sgd": 5 * 4}
#: the torch class of each optimizer the benchmark times (the flat-tensor limit's)
TORCH_CLASSES = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
OPTIMIZER_CFGS = {
    "adamw": dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    "sgd": dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4),
}
#: mmengine and mmcv build one group per parameter, in quadratic time (about 20 s at 10k
#: tensors, half an hour at 100k): above this many tensors they are left out by default
REFERENCE_UP_TO = 10_000


#: x86 vector extensions that decide which of fastopt's kernels (and torch's) run
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl")


_ALLOCATOR: str | None = None  # what steady_allocator() put in effect, once it ran


def steady_allocator() -> str:
    """Keep freed memory in the process while benchmarks time steps (glibc: no trimming of the
    heap, ``mmap`` only for blocks over 32 MB), as a training loop's heap stays large between
    iterations: otherwise an optimizer that allocates temporaries every step (torch's unfused
    AdamW) pays fresh page faults for them, more the more other work ran between its steps.
    Once per process; ``FASTOPT_BENCH_MALLOC=default`` leaves the allocator as it is. Returns
    what is in effect."""
    global _ALLOCATOR
    if _ALLOCATOR is None:
        _ALLOCATOR = "default"
        if os.environ.get("FASTOPT_BENCH_MALLOC") != "default" and sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                mallopt = None
            m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
            if (mallopt is not None and mallopt(m_trim_threshold, 2**31 - 1) == 1
                    and mallopt(m_mmap_threshold, 32 * 2**20) == 1):
                _ALLOCATOR = "glibc, freed memory kept (no trim, mmap over 32 MB)"
    return _ALLOCATOR


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPU model, vector extensions, cores, torch's threads, the
    torch version, the kernel build fastopt picked and how its step reads tensors on this torch
    (``_kernels.read_path``); where torch sees a GPU also its name,
    memory and compute capability and the CUDA and cuDNN versions; and the allocator setting
    the timings run under (``steady_allocator``, put in effect here)."""
    from .. import _kernels
    from .._core import _C

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
    info = {"cpu": cpu, "isa": [f for f in _ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "fastopt_kernels": _C.cpu_isa() if _C is not None else "none (pure Python)",
            "fastopt_reads": _kernels.read_path() if _C is not None else "none (pure Python)",
            "allocator": steady_allocator()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """``machine()`` in one line, for the head of a benchmark's output."""
    m = info or machine()
    line = (f"{m['cpu']} ({' '.join(m['isa']) or 'no AVX'}), {m['cores']} cores; torch {m['torch']} "
            f"with {m['torch_threads']} threads; fastopt kernels: {m['fastopt_kernels']}; "
            f"reads: {m.get('fastopt_reads', '?')}")
    if m.get("allocator", "default") != "default":
        line += "; freed memory kept"
    if "gpu" in m:
        line += f"; GPU: {m['gpu']} ({m['gpu_memory_gb']} GiB, sm {m['gpu_capability']}), CUDA {m['cuda']}"
    return line


def select_device(requested: str = "auto") -> torch.device:
    """The device a benchmark steps on: 'auto' is CUDA where torch sees a GPU, else the CPU;
    'cuda' (or 'cuda:N') without one raises a one-line :class:`SourceError`."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else f"torch (CUDA {torch.version.cuda}) sees no GPU")
            raise SourceError(f"--device {requested}: no CUDA device here ({why}); use --device cpu")
        return torch.device(requested)
    raise SourceError(f"--device must be auto, cpu or cuda, got {requested!r}")


def time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call, with earlier garbage collected first."""
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _timed_step(step: Callable[[], Any], device: torch.device | None) -> tuple[float, int]:
    """Seconds one ``step()`` takes and, on CUDA, the most bytes it had allocated above what
    was allocated before it (0 on the CPU)."""
    if device is None or device.type != "cuda":
        start = time.perf_counter()
        step()
        return time.perf_counter() - start, 0
    torch.cuda.synchronize(device)  # nothing of earlier work left in the stream
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_ev.record()
    step()
    end_ev.record()
    end_ev.synchronize()
    return start_ev.elapsed_time(end_ev) / 1e3, torch.cuda.max_memory_allocated(device) - before


def interleaved_step_times(optimizers: dict[str, torch.optim.Optimizer],
                           set_grads: Callable[[str, int], None], repeats: int, warmup: int = 1,
                           progress: Callable[[str], None] = log, device: torch.device | None = None,
                           peaks: dict[str, int] | None = None, rotate: bool = False,
                           firsts: dict[str, float] | None = None,
                           samples: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median step time of each optimizer; repeats interleaved, ``set_grads(name, r)`` before
    every step (outside the timing), ``warmup`` steps first (state creation), of which only the
    first is timed, into ``firsts`` (when given: each optimizer's first step, if it had none). With
    ``rotate`` repeat r starts at the r-th optimizer (in turn), so that each one follows every
    other in some repeats rather than always the same one, whose footprint it would inherit.

    On a CUDA ``device`` every step is timed with CUDA events after ``torch.cuda.synchronize``
    and ``peaks`` (when given) gets each optimizer's largest step peak: the bytes a step had
    allocated at most above what was allocated before it (peak statistics reset per step).
    Host memory freed between steps stays in the process (``steady_allocator``). ``samples``
    (when given) gets every timed repeat of each optimizer, in repeat order."""
    steady_allocator()
    for k, opt in optimizers.items():
        for r in range(warmup):
            set_grads(k, r)
            if r == 0 and firsts is not None:
                firsts[k] = _timed_step(opt.step, device)[0]
            else:
                opt.step()
    steps: dict[str, list[float]] = {k: [] for k in optimizers}
    names = list(optimizers)
    for r in range(repeats):
        start = r % len(names) if rotate and names else 0
        for k in names[start:] + names[:start]:
            opt = optimizers[k]
            set_grads(k, r)
            dt, peak = _timed_step(opt.step, device)
            steps[k].append(dt)
            if peaks is not None:
                peaks[k] = max(peaks.get(k, 0), peak)
        progress(f"  step: repeat {r + 1}/{repeats}")
    if samples is not None:
        samples.update(steps)
    return {k: statistics.median(v) for k, v in steps.items()}


def width_for(name: str, numel: float) -> float:
    """The zoo width at which ``name`` holds about ``numel`` parameters (found on the meta device,
    or from the entry's known counts)."""
    def count(width: float) -> int:
        return zoo.counts(name, width)[1]

    lo, hi = 1e-3, 1.0
    if count(hi) <= numel:
        return hi
    for _ in range(12):  # bisection on log(width); counts grow monotonically with width
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if count(mid) < numel else (lo, mid)
    return round(hi, 4)


@dataclass
class BenchConfig:
    """A source's optimizer config as each implementation takes it.

    ``api``: whose semantics fastopt builds with ('mmengine' or 'mmcv', the source's);
    ``engine``: an mmengine ``optim_wrapper`` dict (optimizer, paramwise_cfg, constructor);
    ``mmcv``: the same as an mmcv 1.x ``optimizer=`` dict; ``optimizer``: 'adamw', 'adam' or 'sgd'.
    """

    api: str
    engine: dict[str, Any]
    mmcv: dict[str, Any]
    optimizer: str

    def fastopt(self, model: nn.Module) -> torch.optim.Optimizer:
        """fastopt's optimizer for ``model``, built with the source's API."""
        import fastopt

        with held_warnings():  # (built many times: the command says nothing per build)
            if self.api == "mmcv":
                return fastopt.build_optimizer(model, copy.deepcopy(self.mmcv))
            return fastopt.build_optim_wrapper(model, copy.deepcopy(self.engine)).optimizer

    def flat_limit(self, flat: Tensor) -> torch.optim.Optimizer:
        """torch's fused optimizer with the config's hyperparameters on one flat tensor."""
        kwargs = {k: v for k, v in self.engine["optimizer"].items() if k not in ("type", "fused", "foreach")}
        return TORCH_CLASSES[self.optimizer]([flat], fused=True, **kwargs)

    def fused(self, clip: dict | None = None) -> dict[str, Any]:
        """``engine`` with ``fused=True`` in its optimizer (and ``clip_grad`` when given)."""
        cfg = copy.deepcopy(self.engine)
        cfg["optimizer"].pop("foreach", None)
        cfg["optimizer"]["fused"] = True
        return cfg if clip is None else dict(cfg, clip_grad=clip)


def bench_config(source: Source, optimizer: str | None = None) -> BenchConfig:
    """The optimizer config of ``source`` for a benchmark; ``optimizer`` ('adamw' or 'sgd')
    replaces its optimizer by ``OPTIMIZER_CFGS[optimizer]`` (the paramwise_cfg stays)."""
    api, cfg, _ = source.optim
    cfg = copy.deepcopy(cfg)
    if api == "mmengine":
        opt = dict(cfg.get("optimizer") or {})
    else:
        opt = {k: v for k, v in cfg.items() if k not in ("paramwise_cfg", "constructor")}
    if optimizer is not None:
        opt = dict(OPTIMIZER_CFGS[optimizer])
    kind = getattr(opt.get("type"), "__name__", opt.get("type"))
    name = str(kind).rpartition(".")[2].lower()
    if name not in TORCH_CLASSES:
        raise SourceError(f"{source.label}: the benchmark times AdamW, Adam and SGD, this config's optimizer "
                          f"is {kind!r} (--optimizer adamw or sgd replaces it)")
    opt["type"] = TORCH_CLASSES[name].__name__
    extras = {"constructor": cfg["constructor"]} if cfg.get("constructor") else {}
    paramwise = cfg.get("paramwise_cfg")
    return BenchConfig(api, dict(optimizer=opt, paramwise_cfg=paramwise, **extras),
                       dict(opt, paramwise_cfg=paramwise, **extras), name)


#: The default CPU benchmark's widths (about ``DEFAULT_NUMEL`` parameters), kept as the round
#: figures the documented results use; other models and sizes go through ``width_for``.
BENCH_WIDTHS = {"cascade_mask_rcnn_swin_l": 0.35, "vitdet_h": 0.21}
DEFAULT_NUMEL = 30e6


def bench_source(source: Source | str, width: float | None = None, numel: float = DEFAULT_NUMEL,
                 device: torch.device | str = "cpu",
                 cfg_options: dict[str, Any] | None = None) -> tuple[Source, float | None]:
    """(resolved source, zoo width) for a benchmark: a bundled model at ``width``, by default
    the width of about ``numel`` parameters on the CPU and full width on CUDA; other sources
    have no width (None)."""
    if isinstance(source, Source):
        return source, width
    if source in zoo.MODELS:
        if width is None:
            if torch.device(device).type == "cuda":
                width = 1.0
            elif numel == DEFAULT_NUMEL and source in BENCH_WIDTHS:
                width = BENCH_WIDTHS[source]
            else:
                width = width_for(source, numel)
        return resolve(source, cfg_options, width=width), width
    if width is not None:
        raise SourceError(f"--width scales bundled models only, and {source!r} is not one")
    return resolve(source, cfg_options), None


def _build_on(source: Source, device: torch.device, width: float | None,
              progress: Callable[[str], None]) -> nn.Module:
    """The source's model on a real device (a config model is never left on meta)."""
    at = f" at width {width}" if width is not None else ""
    progress(f"building {source.label}{at} ..." if device.type == "cpu"
             else f"building {source.label}{at} on {device} ...")
    return source.build(str(device))


def _references(model: nn.Module, cfg: BenchConfig, tensors: int, up_to: int,
                progress: Callable[[str], None]) -> dict[str, Callable[[], torch.optim.Optimizer]]:
    """Builders of mmengine's (as is and ``fused=True``) and mmcv's optimizers, where installed
    and the model has at most ``up_to`` tensors."""
    if tensors > up_to:
        progress(f"{tensors:,} tensors: mmengine and mmcv left out (their construction grows "
                 f"quadratically; --reference-up-to {tensors} keeps them)")
        return {}
    out: dict[str, Callable[[], torch.optim.Optimizer]] = {}
    try:
        ref = quiet_reference("mmengine")
    except ImportError as exc:
        progress(f"mmengine skipped: {exc}")
    else:
        out["mmengine"] = lambda: ref(model, copy.deepcopy(cfg.engine)).optimizer
        out["mmengine+fused"] = lambda: ref(model, cfg.fused()).optimizer
    try:
        ref_mmcv = quiet_reference("mmcv")
    except ImportError as exc:
        progress(f"mmcv 1.x skipped: {exc}")
    else:
        out["mmcv"] = lambda: ref_mmcv(model, copy.deepcopy(cfg.mmcv))
    return out


def _random_grads(params: list[Tensor], gen: torch.Generator, scale: float,
                  device: torch.device) -> list[Tensor]:
    """A random gradient per tensor, drawn on the CPU or on the CUDA device from ``gen``."""
    if device.type == "cpu":
        return [torch.randn(p.shape, generator=gen) * scale for p in params]
    return [torch.randn(p.shape, generator=gen, device=device) * scale for p in params]


def _generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with 0, for the random gradients."""
    return (torch.Generator() if device.type == "cpu" else torch.Generator(device=device)).manual_seed(0)


def compare(source: Source | str, optimizer: str | None = None, width: float | None = None,
            numel: float = DEFAULT_NUMEL, repeats: int = 5, progress: Callable[[str], None] = log,
            device: torch.device | str = "cpu", reference_up_to: int = REFERENCE_UP_TO,
            with_flat: bool = True) -> dict[str, Any]:
    """Construction and step time of every available implementation on one model (``with_flat``:
    fastopt's flat-buffer mode too, on the CPU, over a copy of the model).

    ``source``: a resolved :class:`Source`, or a source string (a bundled model is built at
    ``width``, see :func:`bench_source`; with a Source, ``width`` is only reported).
    ``optimizer``: 'adamw' or 'sgd' replaces the source's optimizer (None keeps it).
    Returns {"model", "kind", "api", "device", "optimizer", "width", "tensors", "numel",
    "repeats", "machine", "results": [{"impl", "construct_s", "first_step_s", "step_s", "groups",
    "gb_per_s"}, ...]} (construct_s is null for the flat-tensor limit, which needs no construction
    from a config, and for fastopt's flat-buffer mode, on the CPU, over a copy of the model;
    first_step_s is the step that makes the state, timed once); on CUDA each result also has
    "state_bytes" and "step_peak_bytes".
    """
    dev = torch.device(device)
    source, width = bench_source(source, width, numel, dev)
    cfg = bench_config(source, optimizer)
    model = _build_on(source, dev, width, progress)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_elem = sum(p.numel() for p in trainable)

    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {"fastopt": lambda: cfg.fastopt(model)}
    builders.update(_references(model, cfg, len(trainable), reference_up_to, progress))
    flat = torch.zeros(n_elem, requires_grad=True, device=dev)

    construct: dict[str, list[float]] = {k: [] for k in builders}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, build in list(builders.items()):  # warm-up (imports, registries)
            try:
                optimizers[k] = build()
            except Exception as exc:  # a reference without the config's constructor or keys
                if k == "fastopt":
                    raise
                progress(f"{k} cannot build this config ({type(exc).__name__}: {exc}): left out")
                del builders[k], construct[k]
        for r in range(repeats):
            for k, build in builders.items():
                dt, built = time_once(build)
                construct[k].append(dt)
                optimizers[k] = built
            progress(f"  construction: repeat {r + 1}/{repeats}")
    flat_mode = _flat_mode(model, cfg, dev, progress) if with_flat else None
    if flat_mode is not None:
        optimizers["fastopt flat"] = flat_mode[0]
    optimizers["torch flat limit"] = cfg.flat_limit(flat)

    # Default mode: fresh gradient tensors every step (two sets, alternated).
    gen = _generator(dev)
    grads = [_random_grads(trainable, gen, 1e-3, dev) for _ in range(2)]
    flat_grads = [_random_grads([flat], gen, 1e-3, dev)[0] for _ in range(2)]

    def set_grads(k: str, r: int) -> None:
        if k == "torch flat limit":
            flat.grad = flat_grads[r % 2]
            return
        if k == "fastopt flat" and flat_mode is not None:
            with torch.no_grad():  # into the buffers' views, as a backward accumulates
                for p, g in zip(flat_mode[1], grads[r % 2]):
                    if p.grad is not None:
                        p.grad.copy_(g)
            return
        for p, g in zip(trainable, grads[r % 2]):
            p.grad = g

    peaks: dict[str, int] = {}
    firsts: dict[str, float] = {}
    steps = interleaved_step_times(optimizers, set_grads, repeats, warmup=2 if dev.type == "cuda" else 1,
                                   progress=progress, device=dev, peaks=peaks, firsts=firsts)
    if "fastopt flat" in optimizers and getattr(optimizers["fastopt flat"], "fastopt_tier", None) != "flat":
        progress("fastopt flat stepped outside its buffers: left out")  # (never expected)
        del optimizers["fastopt flat"]
    results = []
    for k, opt in optimizers.items():
        step_s = steps[k]
        row = {"impl": k, "construct_s": statistics.median(construct[k]) if k in construct else None,
               "first_step_s": firsts.get(k), "step_s": step_s, "groups": len(opt.param_groups),
               "gb_per_s": n_elem * BYTES_PER_ELEMENT[cfg.optimizer] / step_s / 1e9}
        if dev.type == "cuda":
            row.update(state_bytes=state_bytes(opt), step_peak_bytes=peaks[k])
        results.append(row)
    return {"model": source.label, "kind": source.kind, "api": cfg.api, "device": dev.type,
            "optimizer": cfg.optimizer, "width": width, "tensors": len(trainable), "numel": n_elem,
            "repeats": repeats, "machine": machine(), "results": results}


def _flat_mode(model: nn.Module, cfg: BenchConfig, device: torch.device, progress: Callable[[str], None]
               ) -> tuple[torch.optim.Optimizer, list[Tensor]] | None:
    """fastopt in flat-buffer mode over a copy of ``model`` (CPU only), and the copy's trainable
    parameters in ``model``'s order; None, with a note, where flat buffers do not take it."""
    if device.type != "cpu":
        return None
    twin = copy.deepcopy(model)
    opt = cfg.fastopt(twin)
    try:
        opt.use_flat_buffers()  # type: ignore[attr-defined]
    except ValueError as exc:
        progress(f"fastopt flat cannot lay this model out ({exc}): left out")
        return None
    return opt, [p for p in twin.parameters() if p.requires_grad]


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in an optimizer's state (each storage counted once)."""
    seen: dict[Any, int] = {}
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, Tensor):
                storage = v.untyped_storage()
                seen[(storage.data_ptr(), v.device)] = storage.nbytes()
    return sum(seen.values())


def compare_table(report: dict[str, Any]) -> str:
    """``compare``'s figures as a table: medians, the first step (state made, timed once), groups,
    GB/s and how many times faster fastopt is (on CUDA also the optimizer state and the step's
    peak memory above it, in MB)."""
    ours = next(r for r in report["results"] if r["impl"] == "fastopt")
    cuda = report.get("device") == "cuda"
    at = f" (width {report['width']})" if report.get("width") is not None else ""
    where = " on CUDA" if cuda else ""
    lines = [f"{report['model']}{at}: {report['tensors']:,} tensors, {report['numel'] / 1e6:.1f}M "
             f"parameters; {report['optimizer']}{where}; medians of {report['repeats']} interleaved repeats",
             f"  {'implementation':<18}{'construct':>11}{'1st step':>11}{'step':>11}{'groups':>8}{'GB/s':>7}"
             f"{'fastopt faster: build':>23}{'step':>7}" + (f"{'state MB':>10}{'peak MB':>9}" * cuda)]
    def ms(seconds: float | None) -> str:  # (a column of 11; "-" where there is no figure)
        return f"{seconds * 1e3:9.1f}ms" if seconds is not None else f"{'-':>11}"

    for r in report["results"]:
        c, f = ms(r["construct_s"]), ms(r.get("first_step_s"))
        cr = f"{r['construct_s'] / ours['construct_s']:22.1f}x" if r["construct_s"] else f"{'-':>23}"
        mem = f"{r['state_bytes'] / 1e6:10.1f}{r['step_peak_bytes'] / 1e6:9.1f}" if cuda else ""
        lines.append(f"  {r['impl']:<18}{c}{f}{r['step_s'] * 1e3:9.2f}ms{r['groups']:>8}{r['gb_per_s']:>7.1f}"
                     f"{cr}{r['step_s'] / ours['step_s']:6.2f}x{mem}")
    return "\n".join(lines)


def scaling(sizes: list[int], reference_up_to: int = 5000, repeats: int = 3,
            progress: Callable[[str], None] = log) -> list[dict[str, Any]]:
    """Construction time against tensor count on synthetic models: fastopt at every size,
    mmengine (quadratic) up to ``reference_up_to`` tensors."""
    import fastopt

    cfg = dict(optimizer=dict(OPTIMIZER_CFGS["adamw"]),
               paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                                  custom_keys={"stages.0": dict(lr_mult=0.1)}))
    ref = installed_reference("mmengine")
    rows = []
    for n in sizes:
        model = zoo.synthetic(n)
        impls: dict[str, Callable[[], Any]] = {
            "fastopt": lambda m=model: _held(fastopt.build_optim_wrapper, m, cfg)}
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


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str) -> None:
    """Lay ``fig`` out, write it to ``path`` (PNG at 120 dpi) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(report: dict[str, Any], scale_rows: list[dict[str, Any]], path: str) -> None:
    """PNG: construction time vs tensor count (log-log) and step time bars."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_scale(rows: list[dict[str, Any]], path: str, extra_target_s: float | None = None) -> None:
    """PNG of ``bench_step.py --scale``'s rows: the step times against the tensor count (log-log:
    fastopt's list, one tensor, flat-buffer mode, torch's fused list), and the extra time per
    tensor over the one-tensor step with each row's middle half (``extra_target_s`` as a line)."""
    plt = pyplot()
    ns = [r["tensors"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, label, style in (("list_s", "fastopt, list", "o-"), ("one_s", "fastopt, one tensor", "s--"),
                              ("flat_list_s", "fastopt flat-buffer mode, list", "^:"),
                              ("torch_fused_list_s", "torch fused, list", "x-")):
        ax1.loglog(ns, [r[key] * 1e3 for r in rows], style, label=label)
    ax1.set_xlabel("tensors (the same elements in all)")
    ax1.set_ylabel("step time (ms, median)")
    elements = rows[0].get("elements") if rows else None
    ax1.set_title("AdamW step" + (f", {elements:,} elements" if elements else ""))
    ax1.legend()
    ax1.grid(True, which="both", alpha=0.3)
    extra = [r["extra_per_tensor_s"] * 1e6 for r in rows]
    low = [e - r["extra_q1_per_tensor_s"] * 1e6 for e, r in zip(extra, rows)]
    high = [r["extra_q3_per_tensor_s"] * 1e6 - e for e, r in zip(extra, rows)]
    ax2.errorbar(ns, extra, yerr=[[max(v, 0.0) for v in low], [max(v, 0.0) for v in high]], fmt="o-",
                 capsize=4, label="fastopt, list (bars: middle half of the repeats)")
    if all("backward_extra_per_tensor_s" in r for r in rows):
        ax2.plot(ns, [r["backward_extra_per_tensor_s"] * 1e6 for r in rows], "s:",
                 label="gradients from a backward")
    if extra_target_s is not None:
        ax2.axhline(extra_target_s * 1e6, color="tab:red", ls="--", label="target")
    ax2.set_xscale("log")
    ax2.axhline(0.0, color="gray", lw=0.8)
    ax2.set_xlabel("tensors")
    ax2.set_ylabel("extra time per tensor (us)")
    ax2.set_title("(list step - one-tensor step) / tensors")
    ax2.legend()
    ax2.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)


def plot_phase(fig_data: dict[str, Any], path: str) -> None:
    """PNG of ``phase_compare``'s figures: one bar per variant (fastopt's phase highlighted), the
    plain step and the floor (step + one read of the gradients) as lines."""
    plt = pyplot()
    by = {r["impl"]: r["phase_s"] * 1e3 for r in fig_data["results"]}
    names = [n for n in by if n != READ_FLOOR]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.6))
    colors = ["tab:blue" if n.startswith("fastopt") and "torch" not in n else "tab:gray" for n in names]
    bars = ax.barh(names[::-1], [by[n] for n in names][::-1], color=colors[::-1])
    ax.bar_label(bars, fmt="%.1f ms", padding=3)
    if "fastopt step" in by:
        ax.axvline(by["fastopt step"], color="tab:blue", ls=":", label="plain step")
        if READ_FLOOR in by:
            ax.axvline(by["fastopt step"] + by[READ_FLOOR], color="tab:red", ls="--",
                       label="floor: step + one read of the gradients")
    ax.set_xlabel("time after backward (ms, median of interleaved repeats)")
    where = " on CUDA" if fig_data.get("device") == "cuda" else ""
    ax.set_title(f"{fig_data['model']}: {fig_data['tensors']:,} tensors, {fig_data['numel'] / 1e6:.1f}M, "
                 f"{fig_data['optimizer']}{where}, clip_grad max_norm {fig_data['max_norm']}")
    ax.legend(loc="lower right")
    ax.set_xlim(0, max(by.values()) * 1.18)
    save_figure(fig, path)


def _held(build: Callable[..., Any], *args: Any) -> Any:
    """``build(*args)`` with fastopt's construction warnings held back."""
    with held_warnings():
        return build(*args)


def count_full(name: str) -> tuple[int, int]:
    """(tensors, parameters) of a zoo model at full width (``zoo.counts``: known, or counted on
    the meta device)."""
    return zoo.counts(name, 1.0)


def profile(model: nn.Module, cfg: dict, repeats: int = 5) -> dict[str, Any]:
    """Grouping cost of ``cfg`` on ``model``: median build time (ms), group and tensor counts."""
    import fastopt

    build = fastopt.build_optim_wrapper if config_api(cfg) == "mmengine" else fastopt.build_optimizer
    with warnings.catch_warnings(), held_warnings():
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


def _amp_variants(model: nn.Module, cfg: BenchConfig, clip: dict, params: list[torch.Tensor],
                  device: torch.device) -> dict[str, _Phase]:
    """With a loss scale (gradients as a scaled fp16 backward leaves them): fastopt's fused
    phase, and GradScaler's unscale_ + clip_grad_norm_ + fastopt's step."""
    import fastopt

    fused = fastopt.AmpOptimWrapper(cfg.fastopt(model), loss_scale=1024.0, clip_grad=clip)
    opt = cfg.fastopt(model)
    scaler = grad_scaler(device.type, init_scale=1024.0)
    scaler.scale(torch.zeros((), device=device))  # creates the scale tensor, as the first backward would

    def unscale_clip_step() -> None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, **clip)
        scaler.step(opt)
        scaler.update(1024.0)

    return {"fastopt amp phase": _Phase(fused.step, params),
            "fastopt + torch unscale/clip": _Phase(unscale_clip_step, params)}


#: the time of one read of the gradients (torch's sum over one flat tensor of their size): what
#: the clipped phase adds to the step at the least, since the norm must be known before the update
READ_FLOOR = "one gradient read"


def _phase_variants(model: nn.Module, cfg: BenchConfig, max_norm: float, amp: bool = False,
                    device: torch.device | None = None, references: bool = True) -> dict[str, _Phase]:
    """Every variant of the clipped optimizer phase over the same parameters (the flat limit
    over one flat tensor of the same size); with ``amp`` also the loss-scaled ones, with
    ``references`` mmengine's wrappers."""
    import fastopt

    device = device or torch.device("cpu")
    clip = dict(max_norm=max_norm, norm_type=2)
    out: dict[str, _Phase] = {}
    plain = cfg.fastopt(model)
    params = [p for g in plain.param_groups for p in g["params"]]
    out["fastopt step"] = _Phase(plain.step, params)
    if amp:
        out.update(_amp_variants(model, cfg, clip, params, device))
    phase = fastopt.OptimWrapper(cfg.fastopt(model), clip_grad=clip)
    out["fastopt phase"] = _Phase(phase.step, params)
    clip_then_step = cfg.fastopt(model)

    def torch_clip_then_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, **clip)
        clip_then_step.step()

    out["fastopt + torch clip"] = _Phase(torch_clip_then_step, params)
    ref = installed_reference("mmengine") if references else None
    if ref is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wrapper = ref(model, dict(copy.deepcopy(cfg.engine), clip_grad=clip))
                fused = ref(model, cfg.fused(clip))
            out["mmengine"] = _Phase(wrapper.step, params)
            out["mmengine+fused"] = _Phase(fused.step, params)
        except Exception as exc:  # a constructor or key mmengine does not know
            log(f"mmengine cannot build this config ({type(exc).__name__}: {exc}): left out")
    elif references:
        log("mmengine not installed: its variants are skipped")
    flat = torch.zeros(sum(p.numel() for p in params), requires_grad=True, device=device)
    flat_opt = cfg.flat_limit(flat)

    def flat_limit() -> None:
        torch.linalg.vector_norm(flat.grad)
        flat_opt.step()

    out["flat limit"] = _Phase(flat_limit, [flat])
    read = torch.zeros(sum(p.numel() for p in params), requires_grad=True, device=device)
    out[READ_FLOOR] = _Phase(lambda: torch.sum(read.grad), [read])
    return out



def phase_compare(source: Source | str, optimizer: str | None = None, max_norm: float = 0.1,
                  width: float | None = None, numel: float = DEFAULT_NUMEL, repeats: int = 15,
                  amp: bool = False,
                  progress: Callable[[str], None] = log, device: torch.device | str = "cpu",
                  reference_up_to: int = REFERENCE_UP_TO) -> dict[str, Any]:
    """The time after backward with gradient clipping, every variant on one model: fastopt's
    plain step (the yardstick), its clipped phase, fastopt's step after torch's
    ``clip_grad_norm_``, mmengine's wrapper with ``clip_grad`` (as is and ``fused=True``), the
    flat-tensor limit and one read of the gradients (``READ_FLOOR``); with ``amp`` (a fixed loss
    scale of 1024) also fastopt's fused
    unscale + clip + step and GradScaler's ``unscale_`` + ``clip_grad_norm_`` + fastopt's step.
    ``source``, ``optimizer``, ``width`` and ``device`` as in :func:`compare`.
    Returns {"model", "kind", "api", "device", "optimizer", "max_norm", "amp", "width",
    "tensors", "numel", "repeats", "machine", "results": [{"impl", "phase_s"}, ...]} (on CUDA
    each result also has "step_peak_bytes")."""
    dev = torch.device(device)
    source, width = bench_source(source, width, numel, dev)
    cfg = bench_config(source, optimizer)
    model = _build_on(source, dev, width, progress)
    trainable = [p for p in model.parameters() if p.requires_grad]
    references = len(trainable) <= reference_up_to
    if not references:
        progress(f"{len(trainable):,} tensors: mmengine left out (its construction grows quadratically; "
                 f"--reference-up-to {len(trainable)} keeps it)")
    variants = _phase_variants(model, cfg, max_norm, amp, dev, references)
    gen = _generator(dev)
    grads = {k: [_random_grads(v.params, gen, 1e-2, dev) for _ in range(2)] for k, v in variants.items()}

    def set_grads(k: str, r: int) -> None:
        # torch clips (and unscales) in place, the fused AMP phase writes them back unscaled and clipped
        fresh = "torch" in k or "mmengine" in k or "amp" in k
        for p, g in zip(variants[k].params, grads[k][r % 2]):
            p.grad = g.clone() if fresh else g

    peaks: dict[str, int] = {}
    times = interleaved_step_times(variants, set_grads, repeats, warmup=2, progress=progress,  # type: ignore[arg-type]
                                   device=dev, peaks=peaks)
    results: list[dict[str, Any]] = [{"impl": k, "phase_s": t} for k, t in times.items()]
    if dev.type == "cuda":
        for row in results:
            row["step_peak_bytes"] = peaks[row["impl"]]
    return {"model": source.label, "kind": source.kind, "api": cfg.api, "device": dev.type,
            "optimizer": cfg.optimizer, "max_norm": max_norm, "amp": amp, "width": width,
            "tensors": len(trainable), "numel": sum(p.numel() for p in trainable), "repeats": repeats,
            "machine": machine(), "results": results}


def phase_table(fig: dict[str, Any]) -> str:
    """``phase_compare``'s figures as a table: each variant's median and how many times the
    fastopt phase's time it takes."""
    by = {r["impl"]: r["phase_s"] for r in fig["results"]}
    ours = by["fastopt phase"]
    at = f" (width {fig['width']})" if fig.get("width") is not None else ""
    where = " on CUDA" if fig.get("device") == "cuda" else ""
    lines = [f"{fig['model']}{at}: {fig['tensors']:,} tensors, {fig['numel'] / 1e6:.1f}M "
             f"parameters; {fig['optimizer']}{where}, clip_grad max_norm {fig['max_norm']}: "
             "median time after backward",
             f"  {'variant':<30}{'time':>10}{'vs fastopt phase':>18}"]
    lines += [f"  {name:<30}{t * 1e3:8.2f}ms{t / ours:>17.2f}x" for name, t in by.items()]
    if READ_FLOOR in by and "fastopt step" in by:
        lines.append(f"  the phase adds {(ours - by['fastopt step']) * 1e3:.2f} ms to the step; one read of "
                     f"the gradients takes {by[READ_FLOOR] * 1e3:.2f} ms (the norm needs one before the "
                     "update)")
    return "\n".join(lines)
