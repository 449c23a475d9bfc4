"""What the native tier's per-step checks cost: the step with them against the same step with
the plan trusted as it is (the checks switched off around the call), in one process.

The native tier checks, at every step, that ``param_groups`` hold the plan's parameters
(identity), that each parameter's state dict and the tensors in it are those its pointers were
taken from (identity), that the parameters still have the plan's storage, size and dtype, and
that the state tensors' storage did not move (their addresses); the last two ride along in the
native pass that reads the gradients (``_C.gather_rows``). This benchmark prices them: three
optimizers (all checks; identity checks only; none, the plan trusted and only the gradients
read) step the same parameters with fresh gradients every step, the order rotated every round,
medians reported.

    python benchmarks/bench_checks.py                          # Swin-L Cascade Mask R-CNN, AdamW
    python benchmarks/bench_checks.py --model synthetic_5k --optimizer sgd
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

import fastopt
from fastopt import _kernels
from fastopt.tools import zoo
from fastopt.tools.bench import OPTIMIZER_CFGS, log, machine, machine_line

DEFAULT_WIDTH = {"cascade_mask_rcnn_swin_l": 0.35, "vitdet_h": 0.21}
#: the issue's bound: the checks cost at most 2% of the step
TARGET = 1.02


@contextlib.contextmanager
def checks(mode: str) -> Iterator[None]:
    """The plan's per-step checks as ``mode`` says, for this measurement only: 'all' (as
    shipped), 'identity' (no parameter's or state tensor's storage read), 'none' (the plan
    trusted: only the gradients read)."""
    saved = _kernels.Plan.check_params, _kernels.Plan.check_state, _kernels.gather

    def gradients_only(plan: Any, checks: int = 0, state: Any = None, holder: Any = None) -> Any:
        return saved[2](plan, checks=0)  # (no state: the identity walk is priced apart)

    if mode == "none":
        _kernels.Plan.check_params = lambda self, groups: True  # type: ignore[method-assign]
        _kernels.Plan.check_state = (  # type: ignore[method-assign]
            lambda self, state, storage_checked=False, same=None: True)
        _kernels.gather = gradients_only
    elif mode == "identity":
        _kernels.Plan.check_state = (  # type: ignore[method-assign]
            lambda self, state, storage_checked=False, same=None: self.same_state(state))
        _kernels.gather = gradients_only
    try:
        yield
    finally:
        _kernels.Plan.check_params, _kernels.Plan.check_state, _kernels.gather = saved  # type: ignore[method-assign]


MODES = ("all", "identity", "none")


def run(model_name: str, optimizer: str, width: float, repeats: int) -> dict[str, Any]:
    """Median step time under each mode on one model (an optimizer per mode over the same
    parameters, the order of the modes rotated every round); the figures."""
    if model_name == "synthetic_5k":
        model = zoo.synthetic(5000)
        paramwise = dict(norm_decay_mult=0.0)
    else:
        model = zoo.build(model_name, width=width)
        paramwise = zoo.MODELS[model_name].paramwise_cfg
    cfg = dict(optimizer=dict(OPTIMIZER_CFGS[optimizer]), paramwise_cfg=paramwise)
    opts = {m: fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer for m in MODES}
    params = [p for g in opts["all"].param_groups for p in g["params"]]
    log(f"{model_name} (width {width}): {len(params)} trainable tensors, "
        f"{sum(p.numel() for p in params) / 1e6:.1f}M elements; {optimizer}")
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen) * 1e-3 for p in params] for _ in range(2)]
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(repeats + 2):
        for m in MODES[r % 3:] + MODES[:r % 3]:
            for p, g in zip(params, grads[r % 2]):
                p.grad = g  # fresh gradient objects every step: nothing cached about them holds
            with checks(m):
                start = time.perf_counter()
                opts[m].step()
                elapsed = time.perf_counter() - start
            if r >= 2:  # two warm-up rounds (state created)
                times[m].append(elapsed)
        if (r + 1) % 10 == 0:
            log(f"  round {r + 1}/{repeats + 2}")
    assert all(o.fastopt_tier == "native" for o in opts.values())
    med = {m: statistics.median(v) for m, v in times.items()}
    parts = time_parts(opts["all"], params, grads, repeats)
    return {"model": model_name, "optimizer": optimizer, "width": width, "tensors": len(params),
            "step_s": med, "all_ratio": med["all"] / med["none"],
            "identity_ratio": med["identity"] / med["none"],
            "per_tensor_us": {m: (med[m] - med["none"]) / len(params) * 1e6 for m in ("all", "identity")},
            "parts_s": parts}


def time_parts(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]],
               repeats: int) -> dict[str, float]:
    """Median seconds each part takes inside real steps (caches as a step leaves them), and the
    step's: the parameters' identity, the state's identity, the native pass that reads the
    gradients and checks the parameters' and state tensors' storage."""
    plan_cls = _kernels.Plan
    saved = plan_cls.check_params, plan_cls.same_state, _kernels.gather
    spent: dict[str, list[float]] = {"params": [], "state identity": [], "gradient pass": [], "step": []}

    def timed(name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name].append(time.perf_counter() - start)
            return out
        return run
    plan_cls.check_params = timed("params", saved[0])  # type: ignore[method-assign]
    plan_cls.same_state = timed("state identity", saved[1])  # type: ignore[method-assign]
    gradient_pass = timed("gradient pass", saved[2])

    def apart(plan: Any, checks: int = 2, state: Any = None) -> Any:
        # the pass and the state's identity walk timed one after the other (in a step of a
        # large plan the walk runs beside the pass, on a second thread)
        found = gradient_pass(plan, checks)
        same = None if state is None else plan.same_state(state)
        return None if found is None else (*found[:3], same)
    _kernels.gather = apart
    try:
        for r in range(repeats):
            for p, g in zip(params, grads[r % 2]):
                p.grad = g
            start = time.perf_counter()
            opt.step()
            spent["step"].append(time.perf_counter() - start)
    finally:
        plan_cls.check_params, plan_cls.same_state, _kernels.gather = saved  # type: ignore[method-assign]
    return {k: statistics.median(v) for k, v in spent.items()}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cascade_mask_rcnn_swin_l")
    parser.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZER_CFGS))
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    width = args.width if args.width is not None else DEFAULT_WIDTH.get(args.model, 1.0)
    fig = run(args.model, args.optimizer, width, args.repeats)
    fig["machine"] = machine()
    if args.json:
        print(json.dumps(fig, indent=2))
        return 0
    print(machine_line(fig["machine"]))
    step = fig["step_s"]
    print(f"{fig['model']} ({fig['tensors']} tensors), {fig['optimizer']}, medians of {args.repeats} rounds:")
    print(f"  plan trusted (no checks)       {step['none'] * 1e3:8.2f} ms")
    print(f"  identity checks                {step['identity'] * 1e3:8.2f} ms  {fig['identity_ratio']:.4f}x "
          f"({fig['per_tensor_us']['identity']:+.3f} us per tensor; target at most {TARGET:.2f}x: "
          f"{'meets' if fig['identity_ratio'] <= TARGET else 'MISSES'})")
    print(f"  + parameters', state tensors'  {step['all'] * 1e3:8.2f} ms  {fig['all_ratio']:.4f}x "
          f"({fig['per_tensor_us']['all']:+.3f} us per tensor; as shipped)")
    print("    storage (in the gradient pass)")
    parts = fig["parts_s"]
    print(f"  each check timed inside {args.repeats} steps of {parts['step'] * 1e3:.2f} ms (medians):")
    for name in ("params", "state identity", "gradient pass"):
        share = parts[name] / parts["step"] * 100
        print(f"    {name:<18} {parts[name] * 1e6:7.1f} us  {share:5.2f}% of the step")
    print("    (the gradient pass reads every gradient and its address, and checks each parameter's and "
          "state tensor's storage; timed apart from the state identity walk, which a step over a large "
          "plan runs beside it on a second thread)")
    identity = (parts["params"] + parts["state identity"]) / parts["step"]
    print(f"  identity checks in all: {identity * 100:.2f}% of the step (target at most "
          f"{(TARGET - 1) * 100:.0f}%: {'meets' if identity <= TARGET - 1 else 'MISSES'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
