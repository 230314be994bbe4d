"""The spoke's reconcile loop when the kernel refuses the hub's announcement: said once,
no error loop, and the tunnel keeps its last good state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from tests.support.faults import Fault, FaultyKernel
from tests.unit.builders import ep, net, nets, priv, pub
from wgkube.config import parse_settings
from wgkube.domain.annotations import HubRecord
from wgkube.kernel.memory import MemoryKernel
from wgkube.kube.client import Api
from wgkube.reconcile import Reconciler
from wgkube.spoke_agent.agent import SpokeAgent
from wgkube.spoke_agent.settings import SpokeSettings

HUB = pub("hub")
GOOD = HubRecord(
    node="hub", public_key=HUB, endpoint=ep("203.0.113.1"), allowed_ips=nets("100.96.0.0/24")
)
BAD = GOOD.model_copy(update={"allowed_ips": nets("100.96.0.0/24", "10.66.0.0/24")})


async def eventually(what: str, probe: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(300):
        if await probe():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the spoke's reconcile loop never got there: {what}")


async def test_a_hub_value_the_kernel_refuses_is_said_once_and_the_tunnel_stays(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WG_ADDRESS", "WG_INTERFACE", "HUB_ALLOWED_IPS", "POLL_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    settings = parse_settings(
        SpokeSettings,
        ["--node-name", "spoke", "--poll-interval", "0.02"],
        prog="spoke",
        description="",
    )
    ifname = settings.interface
    kernel = FaultyKernel(MemoryKernel(), [Fault("peer", net("10.66.0.0/16"))])
    reconciler = Reconciler(kernel, keep_refused=True)
    # The reconcile loop never calls the API.
    agent = SpokeAgent(settings, priv("spoke"), cast(Api, None), reconciler, hub=GOOD)

    async def tunnel_up() -> bool:
        return HUB in (await kernel.observe(ifname)).peers

    async def refused() -> bool:
        return HUB in reconciler.refused

    task = asyncio.create_task(agent._reconcile_loop())
    try:
        agent._wakeup.set()
        await eventually("the tunnel to the hub", tunnel_up)
        good = await kernel.observe(ifname)
        with caplog.at_level(logging.INFO, logger="wgkube.spoke"):
            agent.hub = BAD
            agent._wakeup.set()
            await eventually("the refusal", refused)
            writes = kernel.writes
            await asyncio.sleep(0.2)  # about ten polls
        assert kernel.writes == writes, "the refused value is retried"
        said = [r.getMessage() for r in caplog.records if "the tunnel keeps" in r.getMessage()]
        assert len(said) == 1, said
        assert "10.66.0.0/24" in said[0]
        assert not [r for r in caplog.records if "reconcile failed" in r.getMessage()]
        after = await kernel.observe(ifname)
        assert after.peers == good.peers
        assert after.routes == good.routes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
