"""The ``fastopt`` command: check, explain, profile, bench, models, lr-curve.

    fastopt check SOURCE [--semantics mmengine==0.10.3] [--json]      (exit 0 parity, 1 mismatch, 2 error)
    fastopt explain SOURCE [--json] [--filter REGEX]
    fastopt profile SOURCE [--max-groups N] [--max-build-ms MS] [--json]
    fastopt bench [SOURCE] [--device auto|cpu|cuda] [--clip MAX_NORM [--amp]] [--json P] [--plot P]
    fastopt models
    fastopt lr-curve CONFIG.py --iters-per-epoch N [--out lr.png] [--json lr.json]

SOURCE is a config path, ``package::path`` of a shipped config, ``timm:NAME``,
``torchvision:NAME``, ``package.module:callable`` or a bundled model name (fastopt.tools.sources);
``--model SOURCE`` and ``--cfg-options key=value ...`` work with every command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

from torch import nn

from . import sources

if TYPE_CHECKING:
    from .zoo import ZooModel


def _zoo() -> ModuleType:
    """``fastopt.tools.zoo``, imported only by the commands that name a bundled model."""
    return importlib.import_module(".zoo", __package__)



def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# ------------------------------------------------------------------ sources
def add_source_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The model-source arguments every command shares (see fastopt.tools.sources)."""
    p.add_argument("source", nargs=None if required else "?", metavar="SOURCE",
                   help="a config file (OpenMMLab 2.x/3.x or fastopt-style), package::path of a config an "
                        "installed package ships (mmdet::swin/x.py), timm:NAME, torchvision:NAME, "
                        "pkg.module:callable, or a bundled model name (`fastopt models`)")
    p.add_argument("--model", metavar="SOURCE",
                   help="build the model from this source instead of the config's `model=`")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=None,
                   help="override config entries, e.g. optim_wrapper.optimizer.lr=0.01")


def resolve_args(args: argparse.Namespace) -> tuple[sources.Source, sources.Source]:
    """(where the optimizer config comes from, where the model comes from)."""
    options = sources.parse_cfg_options(args.cfg_options)
    if args.source is None and args.model is None:
        raise sources.SourceError("name a config or model source (`fastopt models` lists the bundled ones)")
    cfg_source = sources.resolve(args.source if args.source is not None else args.model, options)
    model_source = cfg_source if args.model is None else sources.resolve(args.model)
    return cfg_source, model_source


def source_label(args: argparse.Namespace, cfg_source: sources.Source) -> str:
    """How the command's output names its sources."""
    return cfg_source.label if args.model is None else f"{args.model} with {cfg_source.label}"


def model_and_cfg(args: argparse.Namespace,
                  device: str = "auto") -> tuple[nn.Module, str, dict[str, Any], str]:
    """(model, api, optimizer config, label) of the command's sources."""
    cfg_source, model_source = resolve_args(args)
    api, cfg, _ = cfg_source.optim
    return model_source.build(device), api, cfg, source_label(args, cfg_source)


def _zoo_spec(name: str) -> ZooModel:
    models = _zoo().MODELS
    if name not in models:
        raise SystemExit(f"unknown model {name!r}; `fastopt models` lists them")
    return models[name]


# ------------------------------------------------------------------ commands
def cmd_models(args: argparse.Namespace) -> int:
    """List the bundled models."""
    from .bench import count_full

    zoo = _zoo()
    rows = []
    for name, spec in zoo.MODELS.items():
        tensors, numel = zoo.counts(name)  # known counts for the giants, else counted on meta
        rows.append((name, tensors, numel, count_full(name)[1], spec.optimizer["type"],
                     "yes" if spec.paramwise_cfg else "no"))
    if args.json:
        print(json.dumps([dict(zip(("name", "tensors", "numel", "numel_full", "optimizer", "paramwise"), r))
                          for r in rows], indent=2))
        return 0
    print(f"{'model':<26}{'tensors':>10}{'params (default width)':>24}{'params (full width)':>21}"
          f"{'optimizer':>11}{'paramwise':>11}")
    for name, tensors, numel, full, opt, pw in rows:
        print(f"{name:<26}{tensors:>10,}{numel:>24,}{full:>21,}{opt:>11}{pw:>11}")
    print(f"\nzoo.build(name, width=...) scales channels; the default width is {zoo.DEFAULT_WIDTH:g}.")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Construction and step time of every installed implementation, side by side."""
    from . import bench

    if args.clip is not None and args.clip <= 0:
        raise SystemExit(f"--clip must be a positive max_norm, got {args.clip}")
    if args.source is not None and args.model is not None:
        raise sources.SourceError("give a SOURCE or --model NAME, not both")
    if args.model is not None:
        _zoo_spec(args.model)
    device = bench.select_device(args.device)
    text = args.source or args.model or "cascade_mask_rcnn_swin_l"
    source, width = bench.bench_source(text, args.width, device=device,
                                       cfg_options=sources.parse_cfg_options(args.cfg_options))
    optimizer = args.optimizer or ("adamw" if source.kind == "zoo" else None)
    up_to = bench.REFERENCE_UP_TO if args.reference_up_to is None else args.reference_up_to
    if args.clip is not None:
        phase = bench.phase_compare(source, optimizer, args.clip, width=width, repeats=args.repeats,
                                    amp=args.amp, device=device, reference_up_to=up_to)
        print(f"\nmachine: {bench.machine_line(phase['machine'])}")
        print(bench.phase_table(phase))
        if args.plot:
            bench.plot_phase(phase, args.plot)
            bench.log(f"wrote {args.plot}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(phase, fh, indent=2)
            bench.log(f"wrote {args.json}")
        return 0
    report = bench.compare(source, optimizer, width=width, repeats=args.repeats, device=device,
                           reference_up_to=up_to, with_flat=not args.no_flat)
    print(f"\nmachine: {bench.machine_line(report['machine'])}")
    print(bench.compare_table(report))
    scale_rows = []
    if args.plot:
        sizes = [1000, 2000, 5000, 10_000, 20_000, 100_000] + ([1_000_000] if args.giant else [])
        bench.log("scaling sweep for the plot ...")
        scale_rows = bench.scaling(sizes)
        bench.plot(report, scale_rows, args.plot)
        bench.log(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(report, scaling=scale_rows), fh, indent=2)
        bench.log(f"wrote {args.json}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Per-parameter rules and the group table."""
    from .explain import explain

    model, _, cfg, label = model_and_cfg(args)
    report = explain(model, cfg)
    pattern = re.compile(args.filter) if args.filter else None
    params = [p for p in report.params if pattern is None or pattern.search(p.name)]
    for key in report.unused_keys:
        print(f"warning: custom key {key!r} matches no trainable parameter", file=sys.stderr)
    if args.json:
        out = report.to_json()
        if pattern is not None:
            out["params"] = [p for p in out["params"] if pattern.search(p["name"])]
        print(json.dumps(out, indent=2))
        return 0
    shown = ["lr", "weight_decay"]
    # group keys that vary between groups; lists (a constructor's param_names) stay in the
    # parameter table below
    extra = sorted({k for g in report.groups for k, v in g.items()
                    if k not in ("num_params", "numel", *shown) and not isinstance(v, (list, tuple))
                    and any(h.get(k) != v for h in report.groups)})
    outside = sorted({p.rule for p in report.params if p.group is None})
    n_out = sum(p.group is None for p in report.params)
    note = f" ({n_out} in none: {', '.join(outside)})" if n_out else ""
    print(f"{label}: {report.semantics} semantics, {report.optimizer}, {len(report.params)} parameters in "
          f"{len(report.groups)} groups{note}, decided in {report.build_s * 1e3:.1f} ms\n")
    columns = shown + extra
    cells = [[_fmt(g.get(k)) for k in columns] for g in report.groups]
    widths = [max(len(k), *(len(row[i]) for row in cells)) + 2 for i, k in enumerate(columns)]
    print(f"  {'group':>5}{'params':>8}{'numel':>12}" + "".join(f"{k:>{w}}" for k, w in zip(columns, widths)))
    for gi, (g, row) in enumerate(zip(report.groups, cells)):
        print(f"  {gi:>5}{g['num_params']:>8}{g['numel']:>12,}" +
              "".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    rules = [p.rule + (f" '{p.custom_key}'" if p.custom_key is not None else "") for p in params]
    name_w = max([60, *(len(p.name) + 2 for p in params)])
    rule_w = max([22, *(len(r) + 2 for r in rules)])
    print(f"\n  {'parameter':<{name_w}}{'group':>6}  {'rule':<{rule_w}}{'lr':>12}{'wd':>12}  notes")
    for p, rule in zip(params, rules):
        notes = []
        if p.also_matched:
            notes.append("also matched " + ", ".join(repr(k) for k in p.also_matched))
        if p.switched_off and p.switched_off != "default":
            notes.append(f"overrides the {p.switched_off} rule")
        group = "-" if p.group is None else str(p.group)
        print(f"  {p.name:<{name_w}}{group:>6}  {rule:<{rule_w}}{_fmt(p.hyper.get('lr', '-')):>12}"
              f"{_fmt(p.hyper.get('weight_decay', '-')):>12}  {'; '.join(notes)}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Grouping cost and group count, with limits for CI."""
    from .bench import profile

    model, api, cfg, label = model_and_cfg(args)
    cfg, note = sources.buildable_here(api, cfg)
    if note is not None:
        print(f"note: {note}", file=sys.stderr)
    result = profile(model, cfg, repeats=args.repeats)
    if args.json:
        print(json.dumps(dict(result, source=label, max_groups=args.max_groups,
                              max_build_ms=args.max_build_ms), indent=2))
    else:
        print(f"{label}: {result['tensors']:,} tensors in {result['groups']} groups, "
              f"built in {result['build_ms']:.2f} ms (median of {args.repeats})")
    failed = []
    if args.max_groups is not None and result["groups"] > args.max_groups:
        failed.append(f"{result['groups']} groups > --max-groups {args.max_groups}")
    if args.max_build_ms is not None and result["build_ms"] > args.max_build_ms:
        failed.append(f"{result['build_ms']:.2f} ms > --max-build-ms {args.max_build_ms}")
    for msg in failed:
        print(f"LIMIT EXCEEDED: {msg}", file=sys.stderr)
    return 1 if failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    """Reference vs fastopt on every parameter: exit 0 on exact parity, 1 on a mismatch."""
    from ..semantics import resolve as resolve_semantics
    from .check import check, reference_builder

    cfg_source, model_source = resolve_args(args)
    api, cfg, _ = cfg_source.optim
    try:
        reference_builder(api)
        resolve_semantics(args.semantics, api)
    except ImportError as exc:
        raise sources.SourceError(str(exc)) from None
    except ValueError as exc:
        raise sources.SourceError(f"--semantics: {exc}") from None
    label = source_label(args, cfg_source)
    try:
        model = model_source.build("auto")
    except sources.SourceError:
        raise
    except Exception as exc:
        raise sources.SourceError(f"{label}: the model does not build here "
                                  f"({type(exc).__name__}: {exc})") from exc
    report = check(model, api, cfg, source=label, semantics=args.semantics, limit=args.limit)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0 if report.parity else 1
    verdict = "EXACT PARITY" if report.parity else f"MISMATCH ({report.num_differences} differences)"
    print(f"{label}\n  {verdict}: fastopt vs {report.reference} ({report.api} semantics "
          f"{report.semantics}), {report.optimizer}, {report.params:,} parameters")
    if report.raised is not None:
        print(f"  both raise {report.raised}")
    else:
        if report.groups_reference is not None:
            print(f"  param groups: {report.groups_reference:,} -> {report.groups_fastopt:,}")
        if report.build_s_reference is not None and report.build_s_fastopt is not None:
            ratio = report.build_s_reference / max(report.build_s_fastopt, 1e-9)
            print(f"  construction: reference {report.build_s_reference * 1e3:.1f} ms, fastopt "
                  f"{report.build_s_fastopt * 1e3:.1f} ms ({ratio:.1f}x)")
    for note in report.notes:
        print(f"  {note}")
    if report.differences:
        name_w = max(len(d.param) for d in report.differences) + 2
        key_w = max(16, *(len(d.key) + 2 for d in report.differences))
        ref_w = max(28, *(len(d.reference) + 2 for d in report.differences))
        print(f"\n  {'parameter':<{name_w}}{'key':<{key_w}}{'reference':<{ref_w}}fastopt")
        for d in report.differences:
            print(f"  {d.param:<{name_w}}{d.key:<{key_w}}{d.reference:<{ref_w}}{d.fastopt}")
        if report.num_differences > len(report.differences):
            print(f"  ... {report.num_differences - len(report.differences)} more (--limit N)")
    return 0 if report.parity else 1


def cmd_lr_curve(args: argparse.Namespace) -> int:
    """The lr at every iteration of a config's schedule, as a plot (and JSON)."""
    from .schedule import lr_curve

    cfg = sources.load_config(args.config, sources.parse_cfg_options(args.cfg_options))
    lrs = lr_curve(cfg, args.iters_per_epoch, args.epochs)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"iters_per_epoch": args.iters_per_epoch, "lr": lrs}, fh)
    if args.out:
        from .bench import pyplot, save_figure

        fig, ax = pyplot().subplots(figsize=(8, 4))
        ax.plot(range(len(lrs)), lrs)
        ax.set_xlabel("iteration")
        ax.set_ylabel("lr")
        ax.set_yscale("log")
        ax.set_title(f"{args.config}: {len(lrs):,} iterations ({args.iters_per_epoch} per epoch)")
        ax.grid(True, which="both", alpha=0.3)
        for epoch in range(1, len(lrs) // args.iters_per_epoch):
            ax.axvline(epoch * args.iters_per_epoch, color="gray", alpha=0.15)
        save_figure(fig, args.out)
    print(f"{len(lrs):,} iterations: lr {lrs[0]:.6g} at the start, max {max(lrs):.6g}, "
          f"{lrs[-1]:.6g} at the end")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastopt`` command."""
    ap = argparse.ArgumentParser(prog="fastopt", description="OpenMMLab optimizer configs, fast.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the bundled detector-shaped models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("bench", help="construction and step time vs mmengine, mmcv and torch")
    p.add_argument("source", nargs="?", metavar="SOURCE",
                   help="a config file, timm:NAME, torchvision:NAME, pkg.module:callable or a bundled model "
                        "(default: cascade_mask_rcnn_swin_l)")
    p.add_argument("--model", metavar="NAME", help="a bundled model (`fastopt models`), instead of SOURCE")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=None,
                   help="override config entries, e.g. optim_wrapper.optimizer.lr=0.01")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the steps run (auto: CUDA when torch sees a GPU, else the CPU)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"],
                   help="replace the source's optimizer (default: adamw for a bundled model, "
                        "else the config's own)")
    p.add_argument("--width", type=float,
                   help="zoo width (default: ~30M parameters on the CPU, full width on CUDA)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reference-up-to", type=int, metavar="TENSORS",
                   help="leave mmengine and mmcv out above this many tensors (their construction is "
                        "quadratic; default: fastopt.tools.bench.REFERENCE_UP_TO)")
    p.add_argument("--no-flat", action="store_true",
                   help="leave out fastopt's flat-buffer mode (on the CPU it steps a copy of the model: "
                        "twice the parameter and gradient memory)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON (docs/cli.md)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: scaling (log-log) and step bars; with "
                   "--clip, the phase's variants against the step and its floor")
    p.add_argument("--giant", action="store_true", help="extend the plot's sweep to 1M tensors")
    p.add_argument("--clip", type=float, metavar="MAX_NORM",
                   help="time the whole optimizer phase with gradient clipping instead (docs/cli.md)")
    p.add_argument("--amp", action="store_true", help="with --clip: also the loss-scaled (AMP) phase")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("lr-curve", help="plot a config's lr schedule (param_scheduler or lr_config)")
    p.add_argument("config")
    p.add_argument("--iters-per-epoch", type=int, required=True)
    p.add_argument("--epochs", type=int, help="default: the config's max_epochs")
    p.add_argument("--out", metavar="PNG")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=None)
    p.set_defaults(func=cmd_lr_curve)

    p = sub.add_parser("check", help="does fastopt give every parameter what mmengine / mmcv gives it?")
    add_source_args(p)
    p.add_argument("--semantics", metavar="HOST==VERSION",
                   help="the host release whose rules fastopt follows (default: the installed one)")
    p.add_argument("--limit", type=int, default=20, help="differences shown (default 20)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    for name, func, text in (("explain", cmd_explain, "why each parameter got its hyperparameters"),
                             ("profile", cmd_profile, "grouping cost and group count, with CI limits")):
        p = sub.add_parser(name, help=text)
        add_source_args(p, required=False)
        if name == "explain":
            p.add_argument("--json", action="store_true")
            p.add_argument("--filter", metavar="REGEX", help="only parameters whose name matches")
        else:
            p.add_argument("--max-groups", type=int)
            p.add_argument("--max-build-ms", type=float)
            p.add_argument("--repeats", type=int, default=5)
            p.add_argument("--json", action="store_true", help="print the figures as JSON")
        p.set_defaults(func=func)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastopt`` console script."""
    args = parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
        try:
            return int(args.func(args) or 0)
        except sources.SourceError as exc:
            print(f"fastopt {args.command}: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
