"""Comparing low-precision (bf16/fp16) results with torch's own step, element by element.

A tolerance in absolute terms (``atol=2e-2``) is as large as a whole Adam update in bf16 and
lets a wrong step through. Here two tensors are compared by how many elements differ at all
and by how many representable values (ulps) apart the differing ones are.
"""

from __future__ import annotations

import torch

_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}


def _ordered(x: torch.Tensor) -> torch.Tensor:
    """The float bit patterns as integers that order like the values (+0 and -0 both 0)."""
    bits = x.detach().contiguous().view(_BITS[x.dtype]).to(torch.int64)
    magnitude = bits & (2 ** (8 * x.element_size() - 1) - 1)
    return torch.where(bits < 0, -magnitude, magnitude)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per element, how many representable values of the dtype lie between ``a`` and ``b``
    (0 where equal or both NaN; the dtype's whole range where only one is NaN)."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    distance = (_ordered(a) - _ordered(b)).abs()
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    distance = torch.where(nan_a & nan_b, 0, distance)
    return torch.where(nan_a ^ nan_b, torch.iinfo(torch.int64).max, distance)


def differing(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, int, int]:
    """``(differing elements, all elements, largest ulp distance)`` over tensor pairs."""
    n_diff = total = worst = 0
    for a, b in pairs:
        d = ulp_distance(a, b)
        n_diff += int((d > 0).sum())
        total += d.numel()
        worst = max(worst, int(d.max()) if d.numel() else 0)
    return n_diff, total, worst


def assert_few_differ(pairs: list[tuple[torch.Tensor, torch.Tensor]], max_share: float,
                      max_ulps: int | None = None, what: str = "") -> None:
    """At most ``max_share`` of all elements differ, and (given ``max_ulps``) none by more than
    ``max_ulps`` ulps."""
    n_diff, total, worst = differing(pairs)
    assert n_diff <= max_share * total, f"{what}: {n_diff} of {total} elements differ (at most " \
                                        f"{max_share:.2%} may); the largest difference is {worst} ulps"
    if max_ulps is not None:
        assert worst <= max_ulps, f"{what}: an element differs by {worst} ulps (at most {max_ulps})"
