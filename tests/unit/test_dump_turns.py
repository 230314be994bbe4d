"""A long netlink dump gives the event loop turns while it is decoded."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from wgkube.kernel.rtnl import DUMP_TURN, LARGE_DUMP, _aiter


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


class Message:
    """Like a pyroute2 message: a reference cycle (pyroute2 keeps `chain = [self]`)."""

    def __init__(self) -> None:
        self.chain = [self]


async def cyclic(n: int) -> AsyncIterator[Message]:
    for _ in range(n):
        yield Message()


async def live_messages_after(n: int) -> int:
    async for _ in _aiter(cyclic(n)):
        pass
    del _
    return sum(isinstance(o, Message) for o in gc.get_objects())


async def test_a_large_dump_frees_its_cyclic_messages_when_it_ends() -> None:
    gc.collect()
    gc.disable()  # the collector's own schedule must not be what frees them
    try:
        # At most the last: the reader's loop variable still holds it as the dump ends.
        assert await live_messages_after(LARGE_DUMP) <= 1
        gc.collect()
        assert await live_messages_after(LARGE_DUMP // 2) > 1, (
            "a small dump is left to the collector's schedule"
        )
    finally:
        gc.enable()
        gc.collect()
