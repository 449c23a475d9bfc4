"""Run ``fastopt check`` over the configs an OpenMMLab package ships (``<package>/.mim/configs``)
and count the outcomes: ok (exact parity), mismatch, skipped (with the reason).

    python scripts/check_configs.py mmdet mmpretrain                  # every config
    python scripts/check_configs.py mmdet --select ci --json out.json  # the CI selection

``--select ci`` takes every config whose optimizer config has a ``paramwise_cfg`` or a
``constructor`` plus a fixed sample (every 10th by path) of the rest. Configs that give the same
model and optimizer config (most differ only in data or schedule) are checked once and share
the outcome. Exit status 1 when any config mismatches, else 0.

Needs the OpenMMLab 2.x host stack (mmengine, mmcv-lite, mmdet, mmpretrain, ...); see
``scripts/host_stack.py`` for the two stand-ins a CPU-only machine needs.
"""

from __future__ import annotations

import argparse
import collections
import gc
import hashlib
import importlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_stack

# mmengine reads `_base_ = 'pkg::...'` through pkg_resources, which warns on every import
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

host_stack.install()

from fastopt.tools import sources  # noqa: E402
from fastopt.tools.check import check  # noqa: E402


def shipped_configs(package: str) -> list[tuple[str, Path]]:
    """``(package/relative path, path)`` of every config a package ships, ``_base_`` fragments
    left out."""
    root = Path(importlib.import_module(package).__file__).parent / ".mim" / "configs"
    paths = sorted(p for p in root.rglob("*.py") if "_base_" not in p.parts)
    return [(f"{package}/{p.relative_to(root)}", p) for p in paths]


def _has_custom_rules(cfg: dict[str, Any]) -> bool:
    wrapper = cfg.get("optim_wrapper")
    if isinstance(wrapper, dict):
        return bool(wrapper.get("paramwise_cfg")) or "constructor" in wrapper
    optimizer = cfg.get("optimizer")
    return isinstance(optimizer, dict) and (bool(optimizer.get("paramwise_cfg"))
                                            or "constructor" in optimizer)


def _fingerprint(cfg: dict[str, Any]) -> str:
    key = repr((cfg.get("default_scope"), cfg.get("model"), cfg.get("optim_wrapper"), cfg.get("optimizer")))
    return hashlib.sha1(key.encode()).hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:160]


def run_one(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Check one config: {'outcome': 'ok'|'mismatch'|'skipped', 'reason': ..., figures}."""
    try:
        source = sources.resolve(str(path))
        api, opt_cfg, _ = source.optim
    except sources.SourceError as exc:
        return {"outcome": "skipped", "reason": f"config: {str(exc).replace(str(path) + ': ', '')}"[:160]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = source.build("auto")
    except sources.SourceError as exc:
        return {"outcome": "skipped", "reason": f"model: {str(exc).replace(str(path) + ': ', '')}"[:160]}
    except Exception as exc:
        return {"outcome": "skipped", "reason": f"model does not build here: {_reason(exc)}"}
    try:
        report = check(model, api, opt_cfg, source=str(path))
    except ImportError as exc:
        return {"outcome": "skipped", "reason": f"reference not installed: {exc}"}
    out = {"outcome": "ok" if report.parity else "mismatch", "params": report.params,
           "groups_reference": report.groups_reference, "groups_fastopt": report.groups_fastopt,
           "build_s_reference": report.build_s_reference, "build_s_fastopt": report.build_s_fastopt,
           "raised": report.raised}
    if not report.parity:
        out["differences"] = [vars(d) for d in report.differences[:5]] + [{"note": n} for n in report.notes]
    return out


def main(argv: list[str] | None = None) -> int:
    """Sweep the shipped configs; print the counts (and JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="+", help="e.g. mmdet mmpretrain")
    ap.add_argument("--select", choices=["all", "ci"], default="all")
    ap.add_argument("--sample-every", type=int, default=10, help="with --select ci: every Nth other config")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--quiet", action="store_true", help="no line per checked config")
    args = ap.parse_args(argv)
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel("ERROR")
    results: dict[str, dict[str, Any]] = {}
    done: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for package in args.packages:
        for i, (rel, path) in enumerate(shipped_configs(package)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cfg = sources.load_config(str(path))
            except Exception as exc:
                results[rel] = {"outcome": "skipped", "reason": f"config does not load: {_reason(exc)}"}
                continue
            custom = _has_custom_rules(cfg)
            if args.select == "ci" and not custom and i % args.sample_every:
                continue
            key = _fingerprint(cfg)
            if key in done:
                results[rel] = dict(done[key], same_as=done[key]["config"], custom=custom)
                continue
            t0 = time.perf_counter()
            outcome = run_one(path, cfg)
            outcome.update(config=rel, custom=custom, seconds=round(time.perf_counter() - t0, 3))
            done[key] = outcome
            results[rel] = outcome
            gc.collect()
            if not args.quiet or outcome["outcome"] == "mismatch":
                tail = outcome.get("reason") or (f"{outcome.get('groups_reference')} -> "
                                                 f"{outcome.get('groups_fastopt')} groups")
                print(f"[{len(results):5}] {outcome['outcome']:<8} {rel}  {tail}", flush=True)
    counts = collections.Counter(r["outcome"] for r in results.values())
    reasons = collections.Counter(r["reason"] for r in results.values() if r["outcome"] == "skipped")
    distinct = len(done)
    print(f"\n{len(results)} configs ({distinct} distinct model + optimizer configs checked) in "
          f"{time.perf_counter() - start:.0f} s: ok {counts['ok']}, mismatch {counts['mismatch']}, "
          f"skipped {counts['skipped']}")
    for reason, n in reasons.most_common():
        print(f"  skipped {n:4}: {reason}")
    with_rules = [r for r in results.values() if r.get("custom")]
    print(f"  with a paramwise_cfg or constructor: {len(with_rules)} "
          f"(ok {sum(r['outcome'] == 'ok' for r in with_rules)}, "
          f"mismatch {sum(r['outcome'] == 'mismatch' for r in with_rules)}, "
          f"skipped {sum(r['outcome'] == 'skipped' for r in with_rules)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": dict(counts), "distinct": distinct,
                                               "results": results}, indent=1))
    return 1 if counts["mismatch"] else 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
