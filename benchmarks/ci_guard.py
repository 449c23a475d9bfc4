"""CI guard: fail when fastopt's construction advantage over mmengine drops below 20x at ~2k tensors.

    python benchmarks/ci_guard.py [--tensors 2000] [--min-speedup 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings

import fastopt
from fastopt.tools import zoo
from fastopt.tools.bench import log, machine_line, time_once
from fastopt.tools.check import installed_reference


def main(argv: list[str] | None = None) -> int:
    """Time both builders, interleaved; exit 1 if the speed-up is below the floor."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=2000)
    ap.add_argument("--min-speedup", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    ref = installed_reference("mmengine")
    if ref is None:
        log("mmengine is not installed: the guard cannot run")
        return 1
    print(f"machine: {machine_line()}")
    model = zoo.synthetic(args.tensors)
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05),
               paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                                  custom_keys={"stages.0": dict(lr_mult=0.1)}))
    impls = {"fastopt": lambda: fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)),
             "mmengine": lambda: ref(model, copy.deepcopy(cfg))}
    times: dict[str, list[float]] = {k: [] for k in impls}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in impls.values():
            fn()
        for _ in range(args.repeats):
            for k, fn in impls.items():
                times[k].append(time_once(fn)[0])
    fast, slow = (statistics.median(times[k]) for k in ("fastopt", "mmengine"))
    speedup = slow / fast
    ok = speedup >= args.min_speedup
    verdict = "ok" if ok else "BELOW"
    print(f"construction at {args.tensors:,} tensors: fastopt {fast * 1e3:.1f} ms, mmengine "
          f"{slow * 1e3:.1f} ms -> {speedup:.0f}x ({verdict}: the floor is {args.min_speedup:g}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
