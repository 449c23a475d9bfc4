"""``within_scope`` / ``scope_override``: a scope stack per thread and per asyncio task."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fastopt.registry import scope_override, within_scope


def test_scopes_nest_and_unwind() -> None:
    assert scope_override() is None
    with within_scope("mmdet"):
        assert scope_override() == "mmdet"
        with within_scope(None):  # None keeps the current scope
            assert scope_override() == "mmdet"
        with within_scope("mmseg"):
            assert scope_override() == "mmseg"
        assert scope_override() == "mmdet"
    assert scope_override() is None


def test_a_scope_unwinds_when_the_block_raises() -> None:
    with pytest.raises(KeyError), within_scope("mmdet"):
        raise KeyError("x")
    assert scope_override() is None


def test_threads_do_not_see_each_others_scope() -> None:
    """Two threads inside different scopes at the same time each see their own, and the main
    thread none."""
    both_inside, both_looked = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    seen: dict[str, str | None] = {}
    errors: list[BaseException] = []

    def work(scope: str) -> None:
        try:
            with within_scope(scope):
                both_inside.wait()
                seen[scope] = scope_override()
                both_looked.wait()  # neither leaves before the other has looked
            seen[f"{scope} after"] = scope_override()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with within_scope("main"):
        threads = [threading.Thread(target=work, args=(s,)) for s in ("mmdet", "mmseg")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert scope_override() == "main"
    assert not errors, errors
    assert seen == {"mmdet": "mmdet", "mmseg": "mmseg", "mmdet after": None, "mmseg after": None}
    assert scope_override() is None


def test_asyncio_tasks_do_not_see_each_others_scope() -> None:
    """Two tasks that interleave inside different scopes each see their own at every step."""

    async def inside(scope: str, log: list[tuple[str, str | None]]) -> None:
        with within_scope(scope):
            for _ in range(3):
                await asyncio.sleep(0)  # the other task runs here
                log.append((scope, scope_override()))

    async def main() -> list[tuple[str, str | None]]:
        log: list[tuple[str, str | None]] = []
        await asyncio.gather(inside("mmdet", log), inside("mmseg", log))
        return log

    log = asyncio.run(main())
    assert len(log) == 6 and {scope for scope, _ in log} == {"mmdet", "mmseg"}
    assert all(seen == scope for scope, seen in log), log
    assert scope_override() is None
