"""The benchmark scripts' measuring pieces on small inputs: they run, their variants step the
tiers they name, and the memory probe sees an allocation (figures themselves are never
asserted on)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from fastopt import _kernels
from fastopt import optim as fo

from .refs import exec_original

ROOT = Path(__file__).parents[1]


def script(name: str) -> ModuleType:
    """A benchmarks/ script imported as a module."""
    return exec_original(ROOT / "benchmarks" / f"{name}.py", f"bench_{name}", {})


def test_scale_rows_cover_list_flat_and_one_tensor() -> None:
    bench_step = script("bench_step")
    rows = bench_step.scale(counts=(4, 16), elements=256, repeats=1)
    assert [r["tensors"] for r in rows] == [4, 16]
    for r in rows:
        for key in ("list_s", "one_s", "flat_list_s", "torch_fused_list_s", "methods_only_list_s",
                    "kernel_only_list_s", "kernel_contiguous_s", "backward_list_s", "per_parameter_list_s"):
            assert r[key] > 0
        assert r["extra_q1_per_tensor_s"] <= r["extra_q3_per_tensor_s"]
    from fastopt import _kernels
    assert _kernels.GATHER_METHODS is bench_step.DIRECT_READS  # (the methods-only column's swap undone)
    table = bench_step.scale_table(rows)
    assert "flat, list" in table and "methods only" in table and "kernel only" in table
    assert "contiguous" in table
    assert "from backward" in table and "state per param" in table and "middle half" in table
    assert len(table.splitlines()) == 4 + (not rows[0]["direct_reads"])


def test_scale_plot_draws_the_rows(tmp_path: Path) -> None:
    bench_step = script("bench_step")
    rows = bench_step.scale(counts=(4, 16), elements=256, repeats=3)
    png = tmp_path / "scale.png"
    from fastopt.tools.bench import plot_scale
    plot_scale(rows, str(png), bench_step.SCALE_EXTRA_TARGET_S)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # the plot draws the scale table only
        bench_step.main(["--plot", str(tmp_path / "other.png")])


def test_scale_verdicts_check_each_row_against_its_targets() -> None:
    bench_step = script("bench_step")
    target = bench_step.SCALE_EXTRA_TARGET_S

    def row(n: int, extra: float, ratio: float) -> dict[str, Any]:
        return {"tensors": n, "extra_per_tensor_s": extra, "ratio": ratio}

    meets = [row(400, target, 1.05), row(4_000, target / 2, 1.3), row(40_000, 0.0, 3.0)]
    verdicts = bench_step.scale_verdicts(meets)
    assert len(verdicts) == 5 and all(good for _, good in verdicts)  # extra at each N, ratio at two
    misses = bench_step.scale_verdicts([row(400, target * 1.01, 1.0), row(4_000, 0.0, 1.31),
                                        row(100_000, target * 2, 9.0)])
    assert [good for _, good in misses] == [False, True, True, False, False]
    assert "list / one tensor" in misses[3][0] and "4,000" in misses[3][0]


def test_first_step_rows_time_every_variant_from_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    bench_step = script("bench_step")
    seen: list[tuple[str, int]] = []  # (optimizer class, state entries before the timed step)
    real = bench_step.time_once

    def spy(fn: Any) -> Any:
        opt = fn.__self__
        seen.append((type(opt).__module__.split(".")[0], len(opt.state)))
        return real(fn)

    monkeypatch.setattr(bench_step, "time_once", spy)
    rows = bench_step.first_steps(counts=(4, 16), elements=256, repeats=2)
    want = [(n, o) for n in (4, 16) for o in ("adamw", "sgd")]
    assert [(r["tensors"], r["optimizer"]) for r in rows] == want
    for r in rows:
        assert all(r[k] > 0 for k in ("fastopt_s", "torch_fused_s", "torch_default_s"))
    # every timed step is an optimizer's first (no state yet): 3 variants, 2 repeats, 4 rows
    assert len(seen) == 24 and all(entries == 0 for _, entries in seen)
    assert sorted({cls for cls, _ in seen}) == ["fastopt", "torch"]
    table = bench_step.first_table(rows)
    assert len(table.splitlines()) == 2 + len(rows) and "torch fused" in table


def twin_lists(seed: int, random_values: bool
               ) -> tuple[torch.optim.Optimizer, list[list[torch.nn.Parameter]]]:
    """Two lists of three parameters of mixed shapes with the same values (ones, or random ones)
    and the same gradients: the first stepped three times by fastopt's AdamW (returned), the
    second left for a bench helper."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5,), (3, 4), (7,)]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    values = [torch.randn(s, generator=gen) if random_values else torch.ones(s) for s in shapes]
    made = []
    for _ in range(2):
        ps = [torch.nn.Parameter(v.clone()) for v in values]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        made.append(ps)
    opt = fo.AdamW(made[0], lr=0.1, weight_decay=0.05)
    for _ in range(3):
        opt.step()
    return opt, made


def test_kernel_only_steps_as_the_optimizer_does() -> None:
    """The 'kernel only' column times the step fastopt's optimizer takes, less its reads."""
    bench_step = script("bench_step")
    opt, made = twin_lists(3, random_values=False)
    kernel = bench_step.KernelOnly(fo.AdamW(made[1], lr=0.1, weight_decay=0.05))  # (its first step)
    kernel.step()
    kernel.step()
    for a, b in zip(*made):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg_sq"], kernel.opt.state[b]["exp_avg_sq"])


def test_kernel_contiguous_steps_copies_laid_back_to_back() -> None:
    """The 'contiguous' column steps copies of the list, one buffer per array with each tensor's
    slice after the one before, as fastopt's optimizer steps the list itself."""
    bench_step = script("bench_step")
    opt, made = twin_lists(5, random_values=True)
    kernel = bench_step.KernelContiguous(fo.AdamW(made[1], lr=0.1, weight_decay=0.05))  # (its first step)
    assert set(kernel.buffers) == {"param", "grad", "exp_avg", "exp_avg_sq"}
    ptrs, numels = kernel.args[0], kernel.args[1]
    param_column = kernel.opt.algorithm.column("param")
    assert list(ptrs[1:, param_column] - ptrs[:-1, param_column]) == [4 * int(n) for n in numels[:-1]]
    kernel.step()
    kernel.step()
    at = 0
    for a, b in zip(made[0], made[1]):
        n = a.numel()
        assert torch.equal(kernel.buffers["param"][at:at + n], a.detach().reshape(-1))
        assert torch.equal(kernel.buffers["exp_avg_sq"][at:at + n], opt.state[a]["exp_avg_sq"].reshape(-1))
        assert torch.equal(kernel.opt.state[b]["step"], opt.state[a]["step"])
        at += n


def test_state_made_per_parameter_steps_as_the_optimizer_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'state per parameter' column's first step makes no state together, and its steps
    are the optimizer's."""
    bench_step = script("bench_step")
    opt, made = twin_lists(7, random_values=True)
    calls = []
    premade = _kernels.premade_state

    def spy(*args: object) -> dict:
        calls.append(args)
        return premade(*args)

    monkeypatch.setattr(_kernels, "premade_state", spy)
    other = bench_step.state_made_per_parameter(fo.AdamW(made[1], lr=0.1, weight_decay=0.05))
    assert calls == [] and _kernels.premade_state is spy  # (made one at a time; the factory put back)
    other.step()
    other.step()
    for a, b in zip(*made):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg"], other.state[b]["exp_avg"])


@pytest.mark.parametrize("rotate", [False, True])
def test_interleaved_steps_rotate_their_order(rotate: bool) -> None:
    from fastopt.tools.bench import interleaved_step_times

    order: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def step(self) -> None:
            order.append(self.name)

    times = interleaved_step_times({k: Recorder(k) for k in "abc"}, lambda name, r: None,  # type: ignore[misc]
                                   repeats=4, warmup=1, progress=lambda msg: None, rotate=rotate)
    assert set(times) == set("abc")
    assert order[:3] == list("abc")  # (the warmup)
    rounds = ["".join(order[3 + 3 * r:6 + 3 * r]) for r in range(4)]
    assert rounds == (["abc", "bca", "cab", "abc"] if rotate else ["abc"] * 4)


def test_interleaved_steps_time_each_first_step_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastopt.tools import bench

    calls: dict[str, int] = {}
    timed: list[tuple[str, int]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def step(self) -> None:
            calls[self.name] = calls.get(self.name, 0) + 1

    real = bench._timed_step

    def spy(step: Any, device: Any) -> tuple[float, int]:
        before = dict(calls)
        out = real(step, device)
        timed.append(next((k, calls[k]) for k in calls if calls[k] != before.get(k)))
        return out

    monkeypatch.setattr(bench, "_timed_step", spy)
    firsts: dict[str, float] = {}
    bench.interleaved_step_times({k: Recorder(k) for k in "ab"}, lambda name, r: None,  # type: ignore[misc]
                                 repeats=3, warmup=2, progress=lambda msg: None, firsts=firsts)
    assert set(firsts) == set("ab") and all(t >= 0 for t in firsts.values())
    # each optimizer's first step timed, its second (warmup) not, then every repeat
    assert timed[:2] == [("a", 1), ("b", 1)] and len(timed) == 2 + 2 * 3
    assert calls == {"a": 5, "b": 5}


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="the probe reads /proc")
def test_peak_bytes_sees_an_allocation() -> None:
    bench_build = script("bench_build")
    small = bench_build.peak_bytes(lambda: None)
    big = bench_build.peak_bytes(lambda: bytearray(64_000_000))
    assert small is not None and big is not None
    assert big >= 50_000_000 > small


@pytest.mark.parametrize("mode", ["all", "identity", "none"])
def test_check_modes_step_natively_and_restore(mode: str) -> None:
    bench_checks = script("bench_checks")
    saved = _kernels.gather, _kernels.Plan.check_state, _kernels.Plan.check_params
    ps = [torch.nn.Parameter(torch.zeros(3)) for _ in range(4)]
    opt = fo.AdamW(ps, lr=0.1)
    for _ in range(2):
        for p in ps:
            p.grad = torch.ones(3)
        with bench_checks.checks(mode):
            opt.step()
    assert opt.fastopt_tier == "native"
    assert (_kernels.gather, _kernels.Plan.check_state, _kernels.Plan.check_params) == saved


def test_the_benchmarks_keep_freed_memory_and_say_so() -> None:
    import os
    import subprocess
    import sys

    from fastopt.tools import bench
    info = bench.machine()
    assert info["allocator"] == bench.steady_allocator()
    if sys.platform.startswith("linux") and os.environ.get("FASTOPT_BENCH_MALLOC") != "default":
        assert info["allocator"].startswith("glibc")
        assert "freed memory kept" in bench.machine_line(info)
    code = "from fastopt.tools import bench; print(bench.steady_allocator())"
    env = dict(os.environ, FASTOPT_BENCH_MALLOC="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "default"
