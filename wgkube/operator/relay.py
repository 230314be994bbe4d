"""Several hubs on one hub: relay interfaces, echoes to the spokes, and the route moves.

The decisions are wgkube.desired.relay (relay_links, split_routes, route_via); this
keeps their inputs (the other hubs, the accepted spokes, the echoes' answers) and carries
out their answers. A relay starts and ends with one kernel route replace per prefix, in
place (no moment without a route) and no API call: the API server may be reachable only
through the hub that cannot deliver.

With one hub nothing here runs: no interface, no socket, no echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from wgkube.desired.failover import preference
from wgkube.desired.model import DesiredState, DeviceSpec
from wgkube.desired.relay import (
    MAX_RELAYS,
    Path,
    RelayLink,
    RelayPolicy,
    after,
    is_down,
    relay_interface_name,
    relay_links,
    route_via,
    split_routes,
    wants_relay_echoes,
)
from wgkube.diff.model import Operation
from wgkube.domain.annotations import HubRecord
from wgkube.domain.errors import KernelError
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import IPNetwork
from wgkube.kernel.port import Kernel
from wgkube.kernel.probe import ETH_P_IP, REPLY_PORT, Prober, echo_request, parse_echo_reply
from wgkube.reconcile import Reconciler

log = logging.getLogger("wgkube.hub.relay")

RELAYING = "relaying to spoke"
"""How a relay's start is logged (the bench counts these)."""
DIRECT = "delivering to spoke"


@dataclass(frozen=True, slots=True)
class Spoke:
    """An accepted spoke as the echoes see it."""

    node: str
    target: IPv4Address
    """Where the echo goes: its first IPv4 address (any address of its peer would do)."""
    prefixes: tuple[IPNetwork, ...]


def spokes_of(
    state: DesiredState, names: dict[PublicKey, str], hub_keys: Collection[PublicKey]
) -> dict[PublicKey, Spoke]:
    """The spokes of a desired state that can be asked (an IPv4 prefix), by key."""
    out: dict[PublicKey, Spoke] = {}
    for key, spec in (state.peers or {}).items():
        if key in hub_keys:
            continue
        v4 = [n for n in spec.allowed_ips if n.version == 4]
        if not v4:
            continue  # IPv6 only: never judged, never relayed
        target = IPv4Address(int(v4[0].network_address) + (0 if v4[0].prefixlen == 32 else 1))
        out[key] = Spoke(names.get(key, key.short()), target, spec.allowed_ips)
    return out


@dataclass
class HubRelay:
    """One hub's relays to the spokes it cannot reach directly."""

    kernel: Kernel
    main: Reconciler
    """The main device's reconciler (the loop's)."""
    device: DeviceSpec
    node: str
    policy: RelayPolicy = field(default_factory=RelayPolicy)
    persistent_keepalive: int = 25
    names: Callable[[], dict[PublicKey, str]] = dict
    """Spoke keys -> Node names, for the log."""
    loosen: Callable[[str], None] = lambda ifname: None
    """Loose reverse-path filtering on a relay interface: what it delivers has any source."""
    clock: Callable[[], float] = time.monotonic
    prober: Prober = field(default_factory=lambda: Prober(answer_echoes=False))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by route moves and by reconciles: a reconcile planned before a move must not
    undo it."""
    links: tuple[RelayLink, ...] = ()
    order: tuple[str, ...] = ()
    """The other hubs in preference order."""
    hub_keys: frozenset[PublicKey] = frozenset()
    relayed: dict[PublicKey, str] = field(default_factory=dict)
    """Spoke -> the hub it is relayed through now."""
    spokes: dict[PublicKey, Spoke] = field(default_factory=dict)
    direct: dict[PublicKey, Path] = field(default_factory=dict)
    via: dict[tuple[PublicKey, str], Path] = field(default_factory=dict)
    hubs: dict[str, Path] = field(default_factory=dict)
    changes: int = 0
    """Relays started or ended (metrics, tests)."""
    _reconcilers: dict[str, Reconciler] = field(default_factory=dict)
    _told: bool = False
    """The announcement has been read once: until then the relay interfaces from before a
    restart are left as they are, and their routes out of the main device's."""
    _prune: bool = True
    _adopted: bool = False
    _sent: dict[object, int] = field(default_factory=dict)
    _answers: set[tuple[int, int, IPv4Address]] = field(default_factory=set)
    _sender: socket.socket | None = None
    _receiver: socket.socket | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- the other hubs -----------------------------------------------------------------
    def set_hubs(self, others: Iterable[HubRecord]) -> None:
        """The other hubs as announced (called at every read of the announcement)."""
        self._told = True
        others = tuple(h for h in others if h.node != self.node)
        links = relay_links(
            self.device, self.node, others, persistent_keepalive=self.persistent_keepalive
        )
        if links != self.links:
            self.links = links
            self._prune = True
            self._changed.set()
        linked = {link.hub for link in links}
        self.order = tuple(h.node for h in preference(others) if h.node in linked)
        self.hub_keys = frozenset(h.public_key for h in others)
        self.hubs = {n: p for n, p in self.hubs.items() if n in linked}

    def announced_none(self) -> None:
        """The announcement was read and is not there. Before any announcement was read,
        that is one that names no other hub (so the loop may run as with one hub, its
        resyncs beside the change path); after one, the last good set stays."""
        if not self._told:
            self.set_hubs(())

    def alone(self) -> bool:
        """The main device alone, as with one hub: the loop may reconcile it directly."""
        return self._told and not self.links and not self._prune

    def link(self, hub: str) -> RelayLink | None:
        return next((link for link in self.links if link.hub == hub), None)

    def _among(self) -> list[str]:
        return [self.device.name, *(link.device.name for link in self.links)]

    def _reconciler(self, ifname: str) -> Reconciler:
        if ifname not in self._reconcilers:
            self._reconcilers[ifname] = Reconciler(self.kernel)
        return self._reconcilers[ifname]

    # -- reconcile (the loop's, with the relays as an input) -----------------------------
    async def reconcile(
        self, desired: DesiredState, changed: Collection[PublicKey] | None
    ) -> tuple[Operation, ...]:
        """The main device and every relay interface towards `desired` as split by the
        relays in force; with one hub (no links), the main device alone as before."""
        if not self._told:
            held = await self._held()
            if held:  # a restart with relays: never add beside them (RouteConflict)
                return await self.main.reconcile(
                    replace(desired, routes=desired.routes - held), None
                )
            return await self.main.reconcile(desired, changed)
        if not self.links and not self._prune:
            return await self.main.reconcile(desired, changed)
        async with self.lock:
            if desired.peers is not None:
                # O(spokes) per reconcile, with several hubs only.
                self.spokes = spokes_of(desired, self.names(), self.hub_keys) if self.links else {}
                for key in [k for k in self.relayed if k not in self.spokes]:
                    del self.relayed[key]
            ops: list[Operation] = []
            if not self._adopted and self.links and desired.peers is not None:
                await self._adopt()
            main, relays = split_routes(desired, self.links, self.relayed)
            moved = False
            for ifname, state in relays.items():
                observed = await self.kernel.observe(ifname)
                if not observed.exists:  # the device and its peer first, then the routes
                    ops += await self._reconciler(ifname).reconcile(
                        replace(state, routes=frozenset())
                    )
                    self.loosen(ifname)
                    observed = await self.kernel.observe(ifname)
                for net in sorted(state.routes - observed.routes, key=str):
                    await self.kernel.move_route(ifname, net, among=self._among())
                    moved = True
                for net in sorted((observed.routes - state.routes) & main.routes, key=str):
                    await self.kernel.move_route(self.device.name, net, among=self._among())
                    moved = True
            if self._prune:
                moved |= await self._remove_unused(main.routes)
                self._prune = False
            if moved:
                self.main.cache = None  # routes moved outside it: read the kernel
            ops += await self.main.reconcile(main, None if moved else changed)
            for ifname, state in relays.items():
                ops += await self._reconciler(ifname).reconcile(state)
            return tuple(ops)

    async def _held(self) -> frozenset[IPNetwork]:
        """Our routes on any relay interface there is."""
        held: set[IPNetwork] = set()
        for index in range(1, MAX_RELAYS + 1):
            held |= (
                await self.kernel.observe(relay_interface_name(self.device.name, index))
            ).routes
        return frozenset(held)

    async def _adopt(self) -> None:
        """At start: a spoke whose routes a relay interface already holds stays relayed
        (until it answers directly for the hold-down), so a restart moves nothing."""
        self._adopted = True
        for link in self.links:
            held = (await self.kernel.observe(link.device.name)).routes
            for key, spoke in self.spokes.items():
                if spoke.prefixes and all(n in held for n in spoke.prefixes):
                    self.relayed[key] = link.hub
                    log.info("spoke %s stays relayed through hub %s", spoke.node, link.hub)

    async def _remove_unused(self, main_routes: frozenset[IPNetwork]) -> bool:
        """Relay interfaces no other hub uses: their routes back to the main device, then
        the interface goes."""
        used = {link.device.name for link in self.links}
        moved = False
        for index in range(1, MAX_RELAYS + 1):
            ifname = relay_interface_name(self.device.name, index)
            if ifname in used:
                continue
            observed = await self.kernel.observe(ifname)
            if not observed.exists:
                continue
            for net in sorted(observed.routes & main_routes, key=str):
                await self.kernel.move_route(self.device.name, net, among=[ifname])
                moved = True
            self.prober.close(ifname)
            self._reconcilers.pop(ifname, None)
            await self.kernel.delete(ifname)
            log.info("removed relay interface %s: no other hub uses it", ifname)
        return moved

    # -- echoes and relays ----------------------------------------------------------------
    @property
    def address(self) -> IPv4Address | None:
        return next((IPv4Address(str(a.ip)) for a in self.device.addresses if a.version == 4), None)

    async def run(self) -> None:
        """Every `policy.interval`: judge the last echoes, move routes, send the next."""
        seq = 0
        next_tick = self.clock()
        try:
            while True:
                if not self.links or self.address is None:
                    self._close()
                    self._changed.clear()
                    await self._changed.wait()
                    next_tick = self.clock()
                    continue
                seq += 1
                try:
                    self._open()
                    await self.tick(seq)
                except OSError as exc:
                    log.warning("cannot echo to the spokes: %s", exc)
                next_tick += self.policy.interval
                delay = next_tick - self.clock()
                if delay < 0:
                    next_tick, delay = self.clock(), 0
                await asyncio.sleep(delay)
        finally:
            self._close()

    def _open(self) -> None:
        address = self.address
        assert address is not None
        if self._receiver is None:
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                receiver.setblocking(False)
                receiver.bind((str(address), REPLY_PORT))
                asyncio.get_running_loop().add_reader(receiver.fileno(), self._read)
            except OSError:
                receiver.close()
                raise
            self._receiver = receiver
        if self._sender is None:
            # Protocol 0: sends only, sees none of the device's traffic.
            self._sender = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        for link in self.links:
            with contextlib.suppress(OSError):  # made by the reconcile under way
                self.prober.open(link.device.name, address)

    def _close(self) -> None:
        self.prober.close_all()
        if self._receiver is not None:
            asyncio.get_running_loop().remove_reader(self._receiver.fileno())
            self._receiver.close()
            self._receiver = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def _read(self) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        while True:
            try:
                data, (host, _port) = receiver.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError as exc:
                log.debug("echo socket failed: %s", exc)
                return
            parsed = parse_echo_reply(data, self.prober.nonce)
            if parsed is not None:
                self._answers.add((parsed[0], parsed[1], IPv4Address(host)))

    def _send(self, ifname: str, target: IPv4Address, seq: int, path: int) -> bool:
        address = self.address
        if self._sender is None or address is None:
            return False
        packet = echo_request(address, target, self.prober.nonce, seq, path)
        try:
            self._sender.sendto(packet, (ifname, ETH_P_IP))
        except OSError as exc:
            log.debug("echo through %s not sent: %s", ifname, exc)
            return False
        return True

    def _answered(self, what: object, seq: int, path: int, target: IPv4Address) -> bool | None:
        """None when `what` was not asked last tick (no verdict)."""
        if self._sent.get(what) != seq:
            return None
        return (seq, path, target) in self._answers

    async def tick(self, seq: int) -> None:
        """Judge the echoes sent last tick, move what must move, send this tick's."""
        now = self.clock()
        last = seq - 1
        for hub in self.order:
            link = self.link(hub)
            if link is not None and self._sent.get(hub) == last:
                answered = self.prober.answered(link.device.name, last)
                self.hubs[hub] = after(self.hubs.get(hub, Path()), answered, now)
        for key, spoke in self.spokes.items():
            verdict = self._answered(key, last, 0, spoke.target)
            if verdict is not None:
                self.direct[key] = after(self.direct.get(key, Path()), verdict, now)
            for index, link in enumerate(self.links, start=1):
                verdict = self._answered((key, link.hub), last, index, spoke.target)
                if verdict is not None:
                    self.via[key, link.hub] = after(
                        self.via.get((key, link.hub), Path()), verdict, now
                    )
        self._answers = {a for a in self._answers if a[0] >= seq}
        for key in list(self.spokes):
            current = self.relayed.get(key)
            direct = self.direct.get(key, Path())
            via = {h: p for (k, h), p in self.via.items() if k == key}
            chosen = route_via(current, direct, via, self.hubs, self.order, now, self.policy)
            if chosen != current:
                await self._move(key, chosen)
        self._forget_gone()
        for link in self.links:
            self.prober.send(link.device.name, seq)
            if self.prober.probing(link.device.name):
                self._sent[link.hub] = seq
        for key, spoke in self.spokes.items():
            if self._send(self.device.name, spoke.target, seq, 0):
                self._sent[key] = seq
            relayed = self.relayed.get(key)
            if not wants_relay_echoes(self.direct.get(key, Path()), relayed):
                for link in self.links:
                    self.via.pop((key, link.hub), None)
                continue
            for index, link in enumerate(self.links, start=1):
                if self._send(link.device.name, spoke.target, seq, index):
                    self._sent[key, link.hub] = seq

    def _forget_gone(self) -> None:
        for key in [k for k in self.direct if k not in self.spokes]:
            del self.direct[key]
        for pair in [p for p in self.via if p[0] not in self.spokes]:
            del self.via[pair]

    async def _move(self, key: PublicKey, hub: str | None) -> None:
        """Point the spoke's routes at `hub`'s relay interface (None: the main device)."""
        spoke = self.spokes[key]
        old = self.relayed.get(key)
        link = self.link(hub) if hub is not None else None
        ifname = link.device.name if link is not None else self.device.name
        async with self.lock:
            try:
                for net in spoke.prefixes:
                    if net.prefixlen > 0:
                        await self.kernel.move_route(ifname, net, among=self._among())
            except KernelError as exc:
                log.error("cannot move the routes of spoke %s to %s: %s", spoke.node, ifname, exc)
                return
            finally:
                self.main.cache = None  # routes moved outside it: read the kernel next time
            if hub is None:
                self.relayed.pop(key, None)
            else:
                self.relayed[key] = hub
        self.changes += 1
        direct = self.direct.get(key, Path())
        if hub is not None:
            log.warning(
                "%s %s through hub %s: %d echoes in a row sent to it directly went "
                "unanswered (%.1fs); it answers through hub %s",
                RELAYING,
                spoke.node,
                hub,
                direct.misses,
                direct.misses * self.policy.interval,
                hub,
            )
        elif old is not None and is_down(self.hubs.get(old, Path()), self.policy):
            log.warning("%s %s directly again: hub %s no longer relays", DIRECT, spoke.node, old)
        else:
            log.info(
                "%s %s directly again: it answered every echo for %.0fs (hold-down)",
                DIRECT,
                spoke.node,
                self.policy.hold_down,
            )
