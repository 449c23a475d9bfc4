"""The native matcher and rule assignment against the plain-Python reference (no torch models)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastopt import _reference as R

_C = pytest.importorskip("fastopt._C")

# Names and keys over a small alphabet so overlaps are common; unicode included.
ALPHABET = st.sampled_from([*"ab.c01_", "é", "σ", "块", "😀"])
NAME = st.text(ALPHABET, max_size=24)
KEY = st.text(ALPHABET, max_size=6)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def python_winner(name: str, keys: list[str]) -> int:
    """The reference loop, written out: first hit in (longest, then alphabetical) order."""
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return keys.index(key)
    return -1


@settings(max_examples=400, deadline=None)
@given(st.lists(NAME, max_size=30), st.lists(KEY, max_size=10, unique=True))
def test_match_equals_reference(names: list[str], keys: list[str]) -> None:
    got = _C.match(names, keys)
    assert got.dtype == np.int32
    assert got.tolist() == [python_winner(n, keys) for n in names]
    assert got.tolist() == R.match(names, keys).tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXT, max_size=20), st.lists(TEXT, max_size=8, unique=True))
def test_match_arbitrary_unicode(names: list[str], keys: list[str]) -> None:
    assert _C.match(names, keys).tolist() == [python_winner(n, keys) for n in names]


@pytest.mark.parametrize(
    ("name", "keys", "winner"),
    [
        ("backbone.layer1.0.conv1.weight", ["backbone", "backbone.layer1"], "backbone.layer1"),
        ("backbone.layers.11.attn.qkv.weight", ["layers.1", "layers.11"], "layers.11"),
        ("neck.fpn_convs.0.conv.bias", ["", "neck"], "neck"),
        ("head.cls.weight", ["", "neck"], ""),
        ("abc", ["ab", "bc"], "ab"),              # equal length: alphabetical
        ("xbcx", ["bc", "ab"], "bc"),
        ("σσ", ["σσ", "ab"], "σσ"),               # length in code points, not bytes
        ("éa", ["é", "a"], "a"),                  # 'a' < 'é' alphabetically, both length 1
        ("x", [], None),
    ],
)
def test_match_examples(name: str, keys: list[str], winner: str | None) -> None:
    got = int(_C.match([name], keys)[0])
    assert got == (keys.index(winner) if winner is not None else -1)


FLAGS = st.integers(0, (1 << 9) - 1)
CONFIG = st.integers(0, (1 << 10) - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAME, FLAGS), max_size=40), st.lists(KEY, max_size=6, unique=True), CONFIG)
def test_assign_equals_reference(rows: list[tuple[str, int]], keys: list[str], config: int) -> None:
    names = [n for n, _ in rows]
    flags = np.array([f for _, f in rows], dtype=np.uint32)
    ids, table = _C.assign(names, flags, keys, config)
    ref_ids, ref_table = R.assign(names, flags, keys, config)
    assert ids.tolist() == ref_ids.tolist()
    assert table.tolist() == ref_table.tolist()
    # Invariants: ids index the table, rows are distinct and in first-seen order.
    assert len({tuple(r) for r in table.tolist()}) == len(table)
    first = [ids.tolist().index(i) for i in range(len(table))]
    assert first == sorted(first)


def test_assign_rejects_mismatched_flags() -> None:
    with pytest.raises(ValueError, match="one entry per name"):
        _C.assign(["a", "b"], np.zeros(3, dtype=np.uint32), [], 0)


def test_match_large_key_set_is_linear_in_names() -> None:
    """Many keys and long names: still exact (layer-decay configs have one key per layer)."""
    keys = [f"backbone.layers.{i}." for i in range(200)] + ["norm", "bias", ""]
    names = [f"backbone.layers.{i}.attn.norm{i % 3}.bias" for i in range(500)]
    assert _C.match(names, keys).tolist() == [python_winner(n, keys) for n in names]


def test_rule_bits_are_the_extensions() -> None:
    """The rule bits the walk and the oracle use (``_rules.py``) are the ones ``_C`` exports."""
    from fastopt import _rules

    for name, bit in _C.PARAM_FLAGS.items():
        assert getattr(_rules, name.upper()) == bit, name
    for name, bit in _C.CONFIG_FLAGS.items():
        assert getattr(_rules, name.upper()) == bit, name
    assert len(_C.PARAM_FLAGS) == 9 and len(_C.CONFIG_FLAGS) == 10
