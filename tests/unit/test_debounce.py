"""The hub loop's debounce acts on the leading edge: an isolated change is applied at
once, what follows within the interval is gathered into one reconcile."""

from __future__ import annotations

import asyncio
import contextlib

from tests.unit.builders import KEYS, iface, node, priv, pub
from wgkube.desired.model import DeviceSpec
from wgkube.kernel.memory import MemoryKernel
from wgkube.operator.loop import Debouncer, HubLoop
from wgkube.operator.registry import PeerRegistry
from wgkube.reconcile import Reconciler

DEVICE = DeviceSpec(name="wg0", private_key=priv("hub"), addresses=(iface("100.96.0.1/24"),))


def test_a_first_change_is_applied_at_once() -> None:
    debouncer = Debouncer(0.2)
    debouncer.event(100.0)
    assert debouncer.delay() == 0.0


def test_a_change_after_a_quiet_interval_is_applied_at_once() -> None:
    debouncer = Debouncer(0.2)
    debouncer.event(100.0)
    debouncer.taken()
    debouncer.event(100.2)
    assert debouncer.delay() == 0.0


def test_a_change_within_the_interval_of_the_previous_one_waits_the_interval() -> None:
    debouncer = Debouncer(0.2)
    debouncer.event(100.0)
    debouncer.taken()
    debouncer.event(100.1)
    assert debouncer.delay() == 0.2


def test_changes_gathered_behind_a_leading_one_stay_leading_until_taken() -> None:
    debouncer = Debouncer(0.2)
    debouncer.event(100.0)
    debouncer.event(100.01)  # before the loop took the first: one reconcile takes both
    assert debouncer.delay() == 0.0
    debouncer.taken()
    assert debouncer.delay() == 0.0  # nothing pending


def test_a_steady_stream_of_changes_is_gathered_every_interval() -> None:
    debouncer = Debouncer(0.2)
    delays = []
    for i in range(10):
        debouncer.event(100.0 + i * 0.05)
        delays.append(debouncer.delay())
        debouncer.taken()
    assert delays == [0.0] + [0.2] * 9


def test_a_zero_interval_never_waits() -> None:
    debouncer = Debouncer(0.0)
    for t in (1.0, 1.0, 1.0):
        debouncer.event(t)
        assert debouncer.delay() == 0.0
        debouncer.taken()


def peer_node(name: str, key: int, allowed: str) -> dict[str, object]:
    annotations = {KEYS.public_key: pub(key).b64, KEYS.allowed_ips: allowed}
    return node(name, annotations, labels={KEYS.peer: "true"})


async def nothing() -> None:
    return None


async def test_the_loop_applies_an_isolated_change_without_waiting_and_gathers_what_follows() -> (
    None
):
    now = [1000.0]
    pauses: list[float] = []
    paused = asyncio.Event()
    gate = asyncio.Event()
    done: asyncio.Queue[int] = asyncio.Queue()

    class Counting:
        def reconciled(self, seconds: float, ops: object) -> None:
            done.put_nowait(1)

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        paused.set()
        await gate.wait()  # the burst keeps coming while the loop waits

    async def report(_: object) -> None:
        return None

    registry = PeerRegistry(KEYS, "hub")
    kernel = MemoryKernel()
    loop = HubLoop(
        DEVICE,
        Reconciler(kernel, observer=Counting()),
        registry,
        report,
        nothing,
        debounce=3600.0,  # a wait would never end within the test
        resync_interval=10**6,
        clock=lambda: now[0],
        pause=pause,
    )

    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(10):
            await done.get()  # the start-up reconcile after the first list
            now[0] += 7200.0
            registry.observe(peer_node("a", 1, "10.0.1.0/24"))
            loop.wake()
            await done.get()
            assert pauses == []
            assert set((await kernel.observe("wg0")).peers) == {pub(1)}

            now[0] += 1.0  # within the interval: the next change waits, and gathers
            registry.observe(peer_node("b", 2, "10.0.2.0/24"))
            loop.wake()
            await paused.wait()
            assert pauses == [3600.0]
            registry.observe(peer_node("c", 3, "10.0.3.0/24"))
            loop.wake()
            gate.set()
            await done.get()
            assert set((await kernel.observe("wg0")).peers) == {pub(1), pub(2), pub(3)}
            for _ in range(20):
                await asyncio.sleep(0)
            assert done.empty()  # c came in the same reconcile as b
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
