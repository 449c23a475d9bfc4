"""What the native tier's per-step checks cost: the step with them against the same step with
the plan trusted as it is (the checks switched off around the call), in one process.

The native tier checks, at every step, that ``param_groups`` hold the plan's parameters
(identity), that each parameter's state dict and the tensors in it are those its pointers were
taken from (identity), and that those tensors' storage did not move (their addresses). This
benchmark prices exactly that: both variants step the same parameters with fresh gradients
every step, repeats interleaved, medians reported.

    python benchmarks/bench_checks.py                          # Swin-L Cascade Mask R-CNN, AdamW
    python benchmarks/bench_checks.py --model synthetic_5k --optimizer sgd
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from collections.abc import Iterator
from typing import Any

import torch

import fastopt
from fastopt import _kernels, zoo
from fastopt.bench import OPTIMIZER_CFGS, interleaved_step_times, log, machine, machine_line

DEFAULT_WIDTH = {"cascade_mask_rcnn_swin_l": 0.35, "vitdet_h": 0.21}
#: the issue's bound: the checks cost at most 2% of the step
TARGET = 1.02


@contextlib.contextmanager
def checks_off() -> Iterator[None]:
    """The plan trusted without its per-step checks (for this measurement only)."""
    saved = _kernels.Plan.check_params, _kernels.Plan.check_state
    _kernels.Plan.check_params = lambda self, groups: True  # type: ignore[method-assign]
    _kernels.Plan.check_state = lambda self, state: True  # type: ignore[method-assign]
    try:
        yield
    finally:
        _kernels.Plan.check_params, _kernels.Plan.check_state = saved  # type: ignore[method-assign]


class Unchecked:
    """An optimizer whose ``step`` runs with the checks off."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.param_groups = opt.param_groups

    def step(self) -> None:
        """The wrapped optimizer's step, checks off."""
        with checks_off():
            self.opt.step()


def run(model_name: str, optimizer: str, width: float, repeats: int) -> dict[str, Any]:
    """Median step with and without the checks on one model; the figures."""
    if model_name == "synthetic_5k":
        model = zoo.synthetic(5000)
        paramwise = dict(norm_decay_mult=0.0)
    else:
        model = zoo.build(model_name, width=width)
        paramwise = zoo.MODELS[model_name].paramwise_cfg
    cfg = dict(optimizer=dict(OPTIMIZER_CFGS[optimizer]), paramwise_cfg=paramwise)
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    checked = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer
    unchecked = fastopt.build_optim_wrapper(model, copy.deepcopy(cfg)).optimizer
    params = [p for g in checked.param_groups for p in g["params"]]
    log(f"{model_name} (width {width}): {tensors} trainable tensors, "
        f"{sum(p.numel() for p in params) / 1e6:.1f}M elements; {optimizer}")
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen) * 1e-3 for p in params] for _ in range(2)]

    def set_grads(name: str, k: int) -> None:
        for p, g in zip(params, grads[k % 2]):
            p.grad = g  # fresh gradient objects every step: nothing cached about them holds

    variants = {"checked": checked, "unchecked": Unchecked(unchecked)}
    times = interleaved_step_times(variants, set_grads, repeats, warmup=2)  # type: ignore[arg-type]
    assert checked.fastopt_tier == unchecked.fastopt_tier == "native"
    ratio = times["checked"] / times["unchecked"]
    per_tensor_us = (times["checked"] - times["unchecked"]) / tensors * 1e6
    return {"model": model_name, "optimizer": optimizer, "width": width, "tensors": tensors,
            "checked_s": times["checked"], "unchecked_s": times["unchecked"], "ratio": ratio,
            "per_tensor_us": per_tensor_us}


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
    print(f"{fig['model']} ({fig['tensors']} tensors), {fig['optimizer']}: step with checks "
          f"{fig['checked_s'] * 1e3:.2f} ms, without {fig['unchecked_s'] * 1e3:.2f} ms: "
          f"{fig['ratio']:.4f}x ({fig['per_tensor_us']:+.3f} us per tensor; "
          f"target at most {TARGET:.2f}x: {'meets' if fig['ratio'] <= TARGET else 'MISSES'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
