"""Optimizer construction time: fastopt vs mmengine 0.10.7 and mmcv 1.7.2, in one process.

Every implementation builds the optimizer for the same model and the model's
real OpenMMLab config; repeats are interleaved (A B C A B C ...) and medians
reported, so machine noise hits all of them alike. Then fastopt alone is
timed on synthetic models from 5k to 100k (or 1M with --giant) tensors to show
that its cost per tensor stays flat.

    python benchmarks/bench_build.py            # full run (~1-2 minutes on 2 cores)
    python benchmarks/bench_build.py --quick    # small models only
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import resource
import statistics
import sys
from typing import Any, Callable

import torch

import fastopt
from fastopt.tools import zoo
from fastopt.tools.bench import log, machine, machine_line, time_once
from fastopt.tools.check import installed_reference

TARGETS = {"big_5k": 100.0, "cascade_mask_rcnn_swin_l": 10.0}
SCALING_LIMIT = 1.5  # fastopt's time per tensor at the largest size / at 5k


def references() -> dict[str, Callable[[torch.nn.Module, dict], Any]]:
    """The reference builders that are installed: mmengine and/or mmcv 1.x."""
    refs = {"mmengine": installed_reference("mmengine"), "mmcv": installed_reference("mmcv")}
    for name, fn in refs.items():
        if fn is None:
            log(f"{name} not installed: skipping it")
    return {k: v for k, v in refs.items() if v is not None}


def n_groups(built: Any) -> int:
    """Param group count of an optimizer or optim wrapper."""
    return len(getattr(built, "optimizer", built).param_groups)


def compare(name: str, repeats: int, refs: dict[str, Callable]) -> dict[str, Any]:
    """Interleaved construction timings of every implementation on one zoo model."""
    spec = zoo.MODELS[name]
    model = zoo.build(name)
    tensors = zoo.count_tensors(model)
    engine_cfg = dict(optimizer=dict(spec.optimizer), paramwise_cfg=spec.paramwise_cfg)
    mmcv_cfg = dict(spec.optimizer, paramwise_cfg=spec.paramwise_cfg)
    impls: dict[str, Callable[[], Any]] = {
        "fastopt (mmengine API)": lambda: fastopt.build_optim_wrapper(model, engine_cfg),
        "fastopt (mmcv API)": lambda: fastopt.build_optimizer(model, mmcv_cfg),
    }
    if "mmengine" in refs:
        impls["mmengine"] = lambda: refs["mmengine"](model, copy.deepcopy(engine_cfg))
    if "mmcv" in refs:
        impls["mmcv"] = lambda: refs["mmcv"](model, copy.deepcopy(mmcv_cfg))
    for fn in impls.values():  # warm-up: imports, registries, first-call caches
        fn()
    times: dict[str, list[float]] = {k: [] for k in impls}
    groups: dict[str, int] = {}
    for r in range(repeats):
        for impl, fn in impls.items():
            dt, built = time_once(fn)
            times[impl].append(dt)
            groups[impl] = n_groups(built)
        log(f"  {name}: repeat {r + 1}/{repeats} done")
    results = [{"impl": k, "construct_s": statistics.median(v), "groups": groups[k]}
               for k, v in times.items()]
    return {"model": name, "tensors": tensors, "numel": zoo.count_numel(model), "results": results}


def peak_bytes(fn: Callable[[], Any]) -> int | None:
    """How far one call raises the process's peak resident memory above what it used before:
    run in a forked child, its peak RSS against its RSS at the start (Linux; None elsewhere)."""
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/statm"):
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, leave without running the parent's exit handlers
        code = 1
        try:
            with open("/proc/self/statm") as fh:
                start = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            os.write(write_end, str(max(peak - start, 0)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        out = fh.read()
    _, status = os.waitpid(pid, 0)
    return int(out) if status == 0 and out else None


def _mb(n: int | None) -> str:
    return f"{'n/a':>11}" if n is None else f"{n / 1e6:8.1f} MB"


def scaling(sizes: list[int], repeats: int, reference: Callable[[torch.nn.Module, dict], Any] | None = None,
            reference_budget: float = 60.0) -> list[dict[str, Any]]:
    """fastopt construction time and peak memory on synthetic models of growing tensor count;
    with ``reference`` (mmengine), its time and peak too at each size where its quadratic growth
    from the last size it ran predicts at most ``reference_budget`` seconds."""
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05),
               paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                                  custom_keys={"stages.0": dict(lr_mult=0.1)}))
    rows = []
    last_ref: tuple[int, float] | None = None
    for n in sizes:
        model = zoo.synthetic(n)
        tensors = zoo.count_tensors(model)
        build = functools.partial(fastopt.build_optim_wrapper, model, cfg)
        build()
        samples = [time_once(build)[0] for _ in range(repeats)]
        t = statistics.median(samples)
        row: dict[str, Any] = {"tensors": tensors, "construct_s": t, "us_per_tensor": t / tensors * 1e6,
                               "peak_bytes": peak_bytes(build)}
        if reference is not None:
            predicted = 0.0 if last_ref is None else last_ref[1] * (tensors / last_ref[0]) ** 2
            row["reference_predicted_s"] = predicted
            if predicted <= reference_budget:
                ref_build = functools.partial(reference, model, copy.deepcopy(cfg))
                row["reference_s"] = time_once(ref_build)[0]
                row["reference_peak_bytes"] = peak_bytes(ref_build)
                last_ref = (tensors, row["reference_s"])
        rows.append(row)
        log(f"  synthetic {tensors:>9,} tensors: {t * 1e3:9.1f} ms, peak {_mb(row['peak_bytes'])}")
        del model, build
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and the scaling sweep; print tables (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models, fewer repeats")
    ap.add_argument("--giant", action="store_true", help="extend the scaling sweep to 1M tensors")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--reference-budget", type=float, default=60.0, metavar="S",
                    help="in the scaling sweep, run mmengine at each size its quadratic growth "
                         "predicts to finish within S seconds (default 60)")
    ap.add_argument("--json", metavar="PATH", help="write all figures as JSON")
    ap.add_argument("--check", action="store_true",
                    help="exit non-zero when a target (100x at 5k, 10x on Swin-L, 1.5x scaling) is missed")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    models = ["cascade_mask_rcnn_swin_l"] if args.quick else ["cascade_mask_rcnn_swin_l", "big_5k"]
    sizes = [5_000, 20_000] if args.quick else [5_000, 20_000, 100_000]
    if args.giant:
        sizes.append(1_000_000)

    refs = references()
    report: dict[str, Any] = {"machine": machine(), "native": fastopt.HAVE_NATIVE,
                              "comparisons": [], "scaling": []}
    print(f"machine: {machine_line(report['machine'])}")
    ok = True
    for name in models:
        log(f"comparing on {name} ...")
        report["comparisons"].append(compare(name, repeats, refs))
    log("scaling sweep (fastopt) ...")
    report["scaling"] = scaling(sizes, repeats, refs.get("mmengine"), args.reference_budget)

    print(f"\nConstruction time, median of {repeats} interleaved repeats")
    for comp in report["comparisons"]:
        print(f"\n{comp['model']}: {comp['tensors']:,} tensors")
        print(f"  {'implementation':<24}{'time':>12}{'groups':>9}{'vs its reference':>18}")
        by = {r["impl"]: r for r in comp["results"]}
        for r in comp["results"]:
            ref = by.get("mmengine" if "mmengine API" in r["impl"] else "mmcv")
            mine = r["impl"].startswith("fastopt")
            speed = f"{ref['construct_s'] / r['construct_s']:10.1f}x" if ref and mine else ""
            print(f"  {r['impl']:<24}{r['construct_s'] * 1e3:10.1f}ms{r['groups']:>9}{speed:>18}")
        target = TARGETS.get(comp["model"])
        if target and "mmengine" in by:
            ratio = by["mmengine"]["construct_s"] / by["fastopt (mmengine API)"]["construct_s"]
            comp["speedup_vs_mmengine"] = ratio
            verdict = "meets" if ratio >= target else "MISSES"
            ok &= ratio >= target
            print(f"  -> {ratio:.0f}x faster than mmengine ({verdict} the {target:.0f}x target)")
    base = report["scaling"][0]["us_per_tensor"]
    print("\nfastopt scaling (mmengine API, synthetic models; peak: how far one build raises the "
          "process's peak RSS)")
    print(f"  {'tensors':>10}{'time':>12}{'us/tensor':>11}{'vs 5k':>8}{'peak':>11}"
          f"{'mmengine':>12}{'its peak':>11}{'fastopt faster':>16}")
    for row in report["scaling"]:
        row["per_tensor_vs_first"] = row["us_per_tensor"] / base
        if "reference_s" in row:
            ref = (f"{row['reference_s']:10.2f} s{_mb(row['reference_peak_bytes'])}"
                   f"{row['reference_s'] / row['construct_s']:15.0f}x")
        elif "reference_predicted_s" in row:
            ref = f"{'~' + format(row['reference_predicted_s'], '.0f') + ' s, not run':>23}"
        else:
            ref = ""
        print(f"  {row['tensors']:>10,}{row['construct_s'] * 1e3:10.1f}ms{row['us_per_tensor']:>11.2f}"
              f"{row['per_tensor_vs_first']:>7.2f}x{_mb(row['peak_bytes'])}{ref}")
    worst = max(r["per_tensor_vs_first"] for r in report["scaling"])
    ok &= worst <= SCALING_LIMIT
    print(f"  -> per-tensor time at most {worst:.2f}x that at 5k "
          f"({'meets' if worst <= SCALING_LIMIT else 'MISSES'} the {SCALING_LIMIT}x target)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        log(f"wrote {args.json}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
