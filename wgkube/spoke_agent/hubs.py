"""Several hubs on one spoke: a device per hub, probes through each, and the route move.

The decisions are wgkube.desired (spoke_ha_states, hub_slots, failover.choose); this
keeps their inputs (the announced hubs, the kernel's devices, the probes' outcomes) and
carries out their answers. The failover path is a kernel route replace and nothing else:
no API call (the API server may be reachable only through the hub that just died); the
log line, metrics and Event follow it through `on_failover`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wgkube.desired.failover import (
    FailoverPolicy,
    HubHealth,
    after_probe,
    choose,
    handshake_fresh,
    is_answering,
    is_down,
    may_lead,
    preference,
)
from wgkube.desired.model import DesiredState, DeviceSpec
from wgkube.desired.spoke import MAX_HUBS, hub_interface_name, hub_slots, spoke_ha_states
from wgkube.diff.model import Operation
from wgkube.domain.annotations import HubRecord
from wgkube.domain.errors import KernelError
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import IPAddress, IPNetwork
from wgkube.kernel.port import Kernel
from wgkube.kernel.probe import Prober
from wgkube.reconcile import Reconciler

log = logging.getLogger("wgkube.spoke")

HANDSHAKE_CHECK_EVERY = 5
"""Probe ticks between reads of the hubs' handshake times (the slow backstop)."""

FailoverHook = Callable[[HubRecord | None, HubRecord, str, bool], None]
"""Told (previous active hub, new active hub, why, whether the previous one was down)
right after the route moved."""


def loosen_rp_filter(ifname: str) -> None:
    """Every hub may deliver to this spoke, on its own device, while the route back points
    at the active hub's: strict reverse-path filtering (rp_filter=1, which some hosts set
    for all devices) would drop what the others deliver. Loose mode (2) still drops a
    source that no route at all leads back to. The kernel uses the larger of the `all`
    value and the device's, so the device is set to 2 only where the result would be 1."""
    base = Path("/proc/sys/net/ipv4/conf")
    try:
        values = [int((base / name / "rp_filter").read_text()) for name in ("all", ifname)]
        if max(values) == 1:
            (base / ifname / "rp_filter").write_text("2\n")
            log.info("set rp_filter=2 (loose) on %s: other hubs deliver on it", ifname)
    except (OSError, ValueError):
        return  # no such device (the memory kernel) or no /proc: nothing to loosen


@dataclass
class HubSet:
    """The hubs a spoke follows when the announcement lists more than one."""

    kernel: Kernel
    reconciler: Reconciler
    device: DeviceSpec
    """The configured device (slot 0's name, key, port, addresses)."""
    policy: FailoverPolicy
    hub_allowed_ips: tuple[IPNetwork, ...] | None = None
    persistent_keepalive: int = 25
    api_server: tuple[IPAddress, ...] = ()
    on_failover: FailoverHook = lambda old, new, why, down: None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    hubs: tuple[HubRecord, ...] = ()
    """The announced hubs in preference order; empty when there is one hub or none."""
    slots: dict[str, int] = field(default_factory=dict)
    active: str | None = None
    health: dict[str, HubHealth] = field(default_factory=dict)
    prober: Prober = field(default_factory=Prober)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _fresh: dict[str, bool | None] = field(default_factory=dict)
    """The backstop's verdict per hub: None while its device has had no handshake."""
    _sent: dict[str, int] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)
    _slots_known: bool = False
    _adopted: bool = False
    _pending: set[str] = field(default_factory=set)
    """Devices that do not exist yet (the prober found none): not judged until they do."""
    _devices: set[str] = field(default_factory=set)
    """Devices the kernel adapter has shown (at the last handshake check)."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- the announced hubs -------------------------------------------------------------
    def set_hubs(self, hubs: tuple[HubRecord, ...]) -> None:
        """New announcement: the next `reconcile` re-reads which device holds which hub."""
        ordered = preference(hubs)
        if ordered != self.hubs:
            self.hubs = ordered
            self._slots_known = False
            names = {h.node for h in ordered}
            self.health = {n: h for n, h in self.health.items() if n in names}
            self._fresh = {n: f for n, f in self._fresh.items() if n in names}
            self._sent = {n: s for n, s in self._sent.items() if n in names}
            self._changed.set()

    def ifname(self, node: str) -> str | None:
        slot = self.slots.get(node)
        return None if slot is None else hub_interface_name(self.device.name, slot)

    def record(self, node: str | None) -> HubRecord | None:
        return next((h for h in self.hubs if h.node == node), None)

    @property
    def first(self) -> HubRecord | None:
        """The hub on the configured interface (slot 0): what its metrics and condition show."""
        return next((h for h in self.hubs if self.slots.get(h.node) == 0), None)

    def desired(self, active: str | None) -> dict[str, DesiredState]:
        return spoke_ha_states(
            self.device,
            self.hubs,
            self.slots,
            active,
            hub_allowed_ips=self.hub_allowed_ips,
            persistent_keepalive=self.persistent_keepalive,
            api_server=self.api_server,
        )

    async def _holdings(self) -> dict[str, PublicKey]:
        """Each slot device that exists -> its peer's key (when it has exactly one)."""
        out: dict[str, PublicKey] = {}
        for slot in range(MAX_HUBS):
            peers = await self.kernel.peers(hub_interface_name(self.device.name, slot))
            if peers is not None and len(peers) == 1:
                out[hub_interface_name(self.device.name, slot)] = next(iter(peers))
        return out

    async def _adopt_active(self) -> str | None:
        """At start: the hub whose device already holds our routes keeps the traffic."""
        for hub in self.hubs:
            ifname = self.ifname(hub.node)
            if ifname is None:
                continue
            routes = (await self.kernel.observe(ifname)).routes
            if routes:
                return hub.node
        return None

    # -- reconcile ----------------------------------------------------------------------
    async def reconcile(self) -> tuple[Operation, ...]:
        """Every hub's device towards its desired state; devices of gone hubs removed."""
        before = self.active
        ops = await self._reconcile()
        record = self.record(self.active)
        if record is not None and self.active != before:
            why = (
                "its interface already held the routes"
                if self._adopted
                else "the most preferred hub not known to be down"
            )
            self.on_failover(None, record, why, False)
        return ops

    async def _reconcile(self) -> tuple[Operation, ...]:
        async with self._lock:
            if not self._slots_known:
                self.slots = hub_slots(self.device.name, self.hubs, await self._holdings())
                self._slots_known = True
                if self.active is None or self.active not in self.slots:
                    adopted = await self._adopt_active()
                    self.active = choose(
                        adopted, [h.node for h in self.hubs], self.health, self.clock(), self.policy
                    )
                    self._adopted = adopted is not None and adopted == self.active
                await self._remove_unused()
            states = self.desired(self.active)
            target = self.ifname(self.active) if self.active else None
            if target is not None:
                # Our routes may sit on another hub's device (a restart after a failover
                # whose reconcile did not finish): move them, never add beside them.
                await self._move_routes(target, states[target].routes)
            ops: list[Operation] = []
            # The active hub's device last: the others give up routes before it takes them.
            for ifname in sorted(states, key=lambda name: name == target):
                ops.extend(await self.reconciler.reconcile(states[ifname]))
                loosen_rp_filter(ifname)
            return tuple(ops)

    async def _remove_unused(self) -> None:
        used = {hub_interface_name(self.device.name, s) for s in self.slots.values()}
        for slot in range(1, MAX_HUBS):
            ifname = hub_interface_name(self.device.name, slot)
            if ifname not in used and (await self.kernel.observe(ifname)).exists:
                self.prober.close(ifname)
                await self.kernel.delete(ifname)
                log.info("removed interface %s: no hub uses it any more", ifname)

    async def leave(self) -> None:
        """Back to one hub: the extra devices go (the configured one stays)."""
        async with self._lock:
            self.hubs = ()
            self.slots = {}
            self.active = None
            self._slots_known = False
            self.prober.close_all()
            await self._remove_unused()

    async def _move_routes(self, ifname: str, routes: frozenset[IPNetwork]) -> None:
        observed = await self.kernel.observe(ifname)
        if not observed.exists:
            return  # made by the reconcile that follows, routes and all
        among = [hub_interface_name(self.device.name, slot) for slot in range(MAX_HUBS)]
        for net in sorted(routes - observed.routes, key=str):
            await self.kernel.move_route(ifname, net, among=among)

    # -- probes and failover ------------------------------------------------------------
    async def run(self) -> None:
        """Probe every `policy.interval`; move the routes when the choice changes."""
        seq = 0
        next_tick = self.clock()
        try:
            while True:
                if not self.hubs:  # one hub or none: nothing to probe, nothing to wake for
                    self._changed.clear()
                    await self._changed.wait()
                    next_tick = self.clock()
                seq += 1
                if self.hubs and self._slots_known:
                    if seq % HANDSHAKE_CHECK_EVERY == 1:
                        await self._check_handshakes()
                    await self.tick(seq)
                next_tick += self.policy.interval
                delay = next_tick - self.clock()
                if delay < 0:  # the loop was held up: do not burst to catch up
                    next_tick = self.clock()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            self.prober.close_all()

    async def _check_handshakes(self) -> None:
        now = self.wall_clock()
        for hub in self.hubs:
            ifname = self.ifname(hub.node)
            if ifname is None:
                continue
            with contextlib.suppress(KernelError):
                peers = await self.kernel.peers(ifname)
                if peers is None:
                    self._devices.discard(ifname)
                else:
                    self._devices.add(ifname)
                peer = (peers or {}).get(hub.public_key)
                if peer is not None:
                    self._fresh[hub.node] = handshake_fresh(peer.last_handshake, now, self.policy)

    async def tick(self, seq: int) -> None:
        """Judge the probes sent last tick, choose, then send this tick's probes."""
        now = self.clock()
        for hub in self.hubs:
            ifname = self.ifname(hub.node)
            if ifname is None:
                continue
            fresh = self._fresh.get(hub.node)
            if ifname in self._pending:
                continue  # its device is still being made: no verdict yet
            if self.prober.probing(ifname):
                if self._sent.get(hub.node) != seq - 1:
                    continue  # not probed last tick: no verdict yet
                answered = self.prober.answered(ifname, seq - 1) and fresh is not False
            elif fresh is None:
                continue  # cannot probe, and no handshake yet: no verdict at all
            else:
                answered = fresh  # cannot probe: only the backstop judges
            before = self.health.get(hub.node, HubHealth())
            self.health[hub.node] = after = after_probe(before, answered, now, self.policy)
            if is_down(after, self.policy) and not is_down(before, self.policy):
                log.warning("hub %s is down: %s", hub.node, self._why_down(hub.node))
            elif before.was_down and before.answering_since is None and is_answering(after):
                log.info(
                    "hub %s answers again; it may lead after %.0fs without a miss",
                    hub.node,
                    self.policy.hold_down,
                )
        chosen = choose(self.active, [h.node for h in self.hubs], self.health, now, self.policy)
        if chosen is not None and chosen != self.active:
            await self.switch(chosen)
        for hub in self.hubs:
            ifname = self.ifname(hub.node)
            if ifname is None:
                continue
            self._open(hub, ifname)
            if self.prober.probing(ifname):
                self.prober.send(ifname, seq)
                self._sent[hub.node] = seq

    def _open(self, hub: HubRecord, ifname: str) -> None:
        address = next((a.ip for a in self.device.addresses if a.version == 4), None)
        if address is None:
            self._once(f"no IPv4 overlay address: hubs are judged by handshake age only ({ifname})")
            return
        try:
            self.prober.open(ifname, ipaddress.IPv4Address(address))
            self._pending.discard(ifname)
        except OSError as exc:
            if exc.errno == errno.ENODEV and ifname not in self._devices:
                self._pending.add(ifname)  # made by the reconcile under way
                return
            self._pending.discard(ifname)
            self._once(
                f"cannot probe through {ifname} ({exc}): judging hub {hub.node} "
                "by handshake age only until it can"
            )

    def _once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            log.warning("%s", text)

    def _why_down(self, node: str) -> str:
        if self._fresh.get(node) is False:
            return f"its last handshake is older than {self.policy.handshake_limit:.0f}s"
        health = self.health.get(node, HubHealth())
        return (
            f"{health.misses} probes in a row through it went unanswered "
            f"({health.misses * self.policy.interval:.1f}s)"
        )

    def _why(self, old: str | None, new: str, now: float) -> str:
        if old is None:
            return f"hub {new} is the preferred hub"
        if is_down(self.health.get(old, HubHealth()), self.policy):
            return f"hub {old} is down ({self._why_down(old)}); hub {new} forwards"
        health = self.health.get(new, HubHealth())
        if may_lead(health, now, self.policy) and health.was_down:
            return (
                f"hub {new} is preferred and has forwarded without a miss for "
                f"{self.policy.hold_down:.0f}s (hold-down)"
            )
        return f"hub {new} is preferred and forwards"

    async def switch(self, new: str) -> None:
        """The failover: point our routes at `new`'s device, one replace per route."""
        old = self.active
        record, ifname = self.record(new), self.ifname(new)
        if record is None or ifname is None:
            return
        why = self._why(old, new, self.clock())
        down = old is not None and is_down(self.health.get(old, HubHealth()), self.policy)
        async with self._lock:
            try:
                await self._move_routes(ifname, self.desired(new)[ifname].routes)
            except KernelError as exc:
                log.error("cannot move traffic to hub %s (%s): %s", new, ifname, exc)
                return
            self.active = new
        self.on_failover(self.record(old), record, why, down)
