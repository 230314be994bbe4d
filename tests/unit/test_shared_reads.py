"""Reads of one device made at once share one dump, except a reconcile's own."""

from __future__ import annotations

import asyncio

import pytest

from wgkube.domain.errors import DeviceNotFound
from wgkube.kernel.base import RtnlBackedKernel, WgDevice


class SlowReads(RtnlBackedKernel):
    """A device read that waits until the test lets it answer."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.answer: asyncio.Event = asyncio.Event()
        self.missing = False

    async def _wg_read(self, ifname: str) -> WgDevice:
        self.started += 1
        number = self.started
        await self.answer.wait()
        if self.missing:
            raise DeviceNotFound(ifname)
        return WgDevice(listen_port=number)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_reads_of_peers_made_at_once_share_one_dump() -> None:
    kernel = SlowReads()
    first = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    second = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    kernel.answer.set()
    assert (await first).listen_port == (await second).listen_port == 1
    assert kernel.started == 1
    # Once answered, the next read is a new one.
    assert (await kernel._device("wg0", join=True)).listen_port == 2


async def test_a_reconcile_read_never_joins_one_begun_before_it_but_others_join_it() -> None:
    kernel = SlowReads()
    reporter = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    reconcile = asyncio.create_task(kernel._device("wg0", join=False))
    await settle()
    metrics = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    kernel.answer.set()
    assert (await reporter).listen_port == 1
    assert (await reconcile).listen_port == 2, "its own read, begun after its call"
    assert (await metrics).listen_port == 2, "joined the newest read under way"
    assert kernel.started == 2


async def test_other_devices_are_read_on_their_own() -> None:
    kernel = SlowReads()
    a = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    b = asyncio.create_task(kernel._device("wg1", join=True))
    await settle()
    kernel.answer.set()
    assert {(await a).listen_port, (await b).listen_port} == {1, 2}


async def test_a_joined_read_cancelled_with_its_caller_is_read_anew_for_the_other() -> None:
    kernel = SlowReads()
    starter = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    joiner = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    starter.cancel()
    await settle()
    kernel.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await starter
    assert (await joiner).listen_port == 2
    assert kernel.started == 2


async def test_a_cancelled_joiner_leaves_the_read_to_its_starter() -> None:
    kernel = SlowReads()
    starter = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    joiner = asyncio.create_task(kernel._device("wg0", join=True))
    await settle()
    joiner.cancel()
    await settle()
    kernel.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await joiner
    assert (await starter).listen_port == 1
    assert kernel.started == 1


async def test_a_missing_device_is_the_answer_of_every_joined_read() -> None:
    kernel = SlowReads()
    kernel.missing = True
    first = asyncio.create_task(kernel.peers("wg0"))
    await settle()
    second = asyncio.create_task(kernel.peers("wg0"))
    await settle()
    kernel.answer.set()
    assert await first is None
    assert await second is None
    assert kernel.started == 1
