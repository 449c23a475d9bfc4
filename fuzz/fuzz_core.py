"""Coverage-guided differential fuzzing of the native core (atheris / libFuzzer).

Every input is decoded into parameter names, custom keys, flag words and a config word;
``fastopt._C.match`` / ``_C.assign`` must agree with the plain-Python reference exactly,
and the step kernels must take random sizes, dtypes and hyperparameters without crashing.

    python fuzz/fuzz_core.py -max_total_time=600 -artifact_prefix=fuzz/artifacts/   # ten minutes
    python fuzz/fuzz_core.py -runs=20000 -artifact_prefix=fuzz/artifacts/            # a bounded pass

Findings land in ``fuzz/artifacts/`` (ignored by git; create it first). An input that
reproduces a bug is kept as a named regression input beside this file and replayed by a test.
"""

from __future__ import annotations

import sys

import atheris
import numpy as np
import torch  # noqa: F401  (one OpenMP runtime: torch's, loaded before the extension)

from fastopt import _C, _reference

# Coverage feedback from the reference rules (the native side is compared against them).
for _name in ("match", "decide", "assign", "key_priority"):
    setattr(_reference, _name, atheris.instrument_func(getattr(_reference, _name)))

DTYPES = [np.float32, np.float64, np.uint16, np.uint16]  # bf16 and fp16 travel as raw 16-bit words


def _text(fdp: atheris.FuzzedDataProvider, n: int) -> str:
    s = fdp.ConsumeUnicodeNoSurrogates(n)
    return s.replace("\x00", "")  # names and keys are Python identifiers joined by dots


def check_rules(fdp: atheris.FuzzedDataProvider) -> None:
    keys = list(dict.fromkeys(_text(fdp, 6) for _ in range(fdp.ConsumeIntInRange(0, 6))))
    n = fdp.ConsumeIntInRange(0, 24)
    names = [_text(fdp, 24) for _ in range(n)]
    flags = np.array([fdp.ConsumeIntInRange(0, 511) for _ in range(n)], dtype=np.uint32)
    config = fdp.ConsumeIntInRange(0, 1023)
    got = _C.match(names, keys)
    want = _reference.match(names, keys)
    if got.tolist() != want.tolist():
        raise AssertionError(f"match differs: {names!r} {keys!r}: {got.tolist()} != {want.tolist()}")
    ids, table = _C.assign(names, flags, keys, config)
    rids, rtable = _reference.assign(names, flags, keys, config)
    if ids.tolist() != rids.tolist() or table.tolist() != rtable.tolist():
        raise AssertionError(f"assign differs for {names!r} {keys!r} {flags.tolist()} {config}")


def check_kernels(fdp: atheris.FuzzedDataProvider) -> None:
    n = fdp.ConsumeIntInRange(0, 5)
    code = fdp.ConsumeIntInRange(0, 3)
    sizes = [fdp.ConsumeIntInRange(0, 70_000) for _ in range(n)]
    arrays = [[np.zeros(s, dtype=DTYPES[code]) for _ in range(5)] for s in sizes]
    steps = np.zeros(n, dtype=np.float32)
    adam = fdp.ConsumeBool()
    cols = 6 if adam else 3
    ptrs = np.zeros((n, cols), dtype=np.uint64)
    for i, arrs in enumerate(arrays):
        for c in range(min(cols, 5)):
            ptrs[i, c] = arrs[c].ctypes.data if sizes[i] else 0
        if adam:
            ptrs[i, 5] = steps.ctypes.data + 4 * i
    hyper = np.array([[fdp.ConsumeFloatInRange(0.0, 1.0) for _ in range(5 if adam else 4)] for _ in range(n)],
                     dtype=np.float64).reshape(n, 5 if adam else 4)
    flags = np.array([fdp.ConsumeIntInRange(0, 31) for _ in range(n)], dtype=np.int32)
    scale = fdp.ConsumeFloatInRange(0.0, 4.0)
    mult = fdp.ConsumeFloatInRange(0.0, 2.0)
    numels = np.array(sizes, dtype=np.int64)
    dtypes = np.full(n, code, dtype=np.int32)
    try:
        if adam:
            _C.adam_step(ptrs, numels, dtypes, flags, hyper, scale, mult)
        else:
            _C.sgd_step(ptrs, numels, dtypes, flags, hyper, scale, mult)
    except ValueError:
        pass  # rejected input (e.g. a null pointer where momentum needs a buffer): fine, no crash
    norm, _ = _C.grad_norm(np.ascontiguousarray(ptrs[:, 1]), numels, dtypes, 2.0 if adam else float("inf"))
    if not norm >= 0:  # zero-filled gradients (the step only rewrites them when unscaling)
        raise AssertionError(f"grad_norm gave {norm} for sizes {sizes}")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        check_rules(fdp)
    else:
        check_kernels(fdp)


def main() -> None:
    """Run the fuzzer with libFuzzer's command-line flags."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
