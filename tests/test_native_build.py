"""The built extension as the optimizer left it: the instructions its hot passes rely on are
in the binary (a compiler may drop what it takes for code without effects)."""

from __future__ import annotations

import platform
import shutil
import subprocess

import pytest

_C = pytest.importorskip("fastopt._C")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="prefetch instructions of x86-64 "
                    "and AArch64 only")
def test_the_built_extension_keeps_its_prefetch_instructions() -> None:
    objdump = shutil.which("objdump")
    assert objdump is not None, "objdump (binutils, beside the compiler that built the extension) not found"
    listing = subprocess.run([objdump, "-d", _C.__file__], capture_output=True, text=True, check=True).stdout
    mnemonic = "prefetcht0" if platform.machine() == "x86_64" else "prfm"
    # the gradient pass, the state checks and the norm table's pass each prefetch along torch's
    # pointers (csrc/gather.cpp through csrc/prefetch.h)
    assert listing.count(mnemonic) >= 10
    # the gradient holder's release prefetches the reference counts it drops for writing
    write = "prefetchw" if platform.machine() == "x86_64" else "pstl1keep"
    assert write in listing, f"no {write} in the extension"
