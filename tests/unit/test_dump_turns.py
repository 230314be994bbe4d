"""A long netlink dump gives the event loop turns while it is decoded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from wgkube.kernel.rtnl import DUMP_TURN, _aiter


async def queued(n: int) -> AsyncIterator[int]:
    """A dump whose answers are all there already: it never suspends by itself."""
    for i in range(n):
        yield i


async def test_a_dump_of_queued_answers_lets_other_tasks_run_while_it_is_read() -> None:
    turns: list[int] = []
    read = 0

    async def other() -> None:
        while True:
            turns.append(read)
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    async for _ in _aiter(queued(10 * DUMP_TURN)):
        read += 1
    task.cancel()
    during = [at for at in turns if 0 < at < 10 * DUMP_TURN]
    assert len(during) >= 9, f"the other task ran at {turns}"
    assert max(b - a for a, b in zip([0, *during], [*during, read], strict=True)) <= DUMP_TURN
