"""Several hubs: each hub's relay interfaces, and per spoke whether it delivers directly or
relays through another hub, all pure with the clock passed in.

WireGuard's cryptokey routing keeps one hub from handing a spoke's packet to another on
its main device: there the other hub's peer holds only that hub's own addresses, so a
packet from it with a spoke's source is dropped. So each hub keeps one **relay
interface per other hub**, whose one peer is that hub holding the whole shared range:
what arrives on it may carry any overlay source, and anything routed into it reaches
that hub. The routes to the other hubs' own addresses sit there too (so what a hub
returns to another, whatever its source, is accepted).

A hub judges each spoke by an echo written into its main device (the spoke answers on
the interface it came in by, wgkube.kernel.probe): 3 unanswered in a row and the hub
cannot deliver to it. Then the spoke's routes move (one replace each) onto the relay
interface of the most preferred hub that answers on its relay interface *and* through
which the spoke answers; never through a hub whose relay does not answer. They move back
once the spoke has answered directly without a miss for the hold-down; a miss restarts
it. A spoke that has never answered (its agent does not answer echoes, or it just
joined) is never judged: nothing moves for it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from wgkube.desired.hub import is_default_route
from wgkube.desired.model import DesiredState, DeviceSpec, PeerSpec
from wgkube.domain.annotations import HubRecord
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import Endpoint, IPNetwork, normalize_networks

MAX_RELAYS = 4
"""Other hubs a hub keeps a relay interface for (2 or 3 hubs in practice)."""


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    """How fast a hub judges a spoke and another hub; settings map onto it."""

    interval: float = 0.2
    """Seconds between echoes to each spoke; also the time an echo has to come back."""
    misses: int = 3
    """Echoes in a row without an answer before a path is down: 0.6 s at 0.2 s."""
    startup_misses: int = 50
    """The same for a relay path that has not answered once (10 s at 0.2 s): a hub just
    started, or a relay adopted at restart, is not down at once, and a dead one is before
    long. (A spoke that has never answered directly is never judged at all.)"""
    hold_down: float = 30.0
    """Seconds a spoke must answer directly, without a miss, before its relay ends."""


@dataclass(frozen=True, slots=True)
class Path:
    """What the echoes (or probes) along one path have shown so far."""

    misses: int = 0
    answered_once: bool = False
    answering_since: float | None = None
    """When the current run of answers began; None while the path does not answer."""


def after(path: Path, answered: bool, now: float) -> Path:
    """One echo's outcome folded into a path's record."""
    if answered:
        since = path.answering_since if path.answering_since is not None else now
        return Path(misses=0, answered_once=True, answering_since=since)
    return replace(path, misses=path.misses + 1, answering_since=None)


def is_down(path: Path, policy: RelayPolicy) -> bool:
    """A relay path (another hub, or a spoke through it): `misses` in a row after it has
    answered once, `startup_misses` before."""
    return path.misses >= (policy.misses if path.answered_once else policy.startup_misses)


def cannot_deliver(direct: Path, policy: RelayPolicy) -> bool:
    """The spoke does not answer directly: answered once, then `misses` in a row. One
    that never answered (an agent that does not answer echoes) is never judged."""
    return direct.answered_once and direct.misses >= policy.misses


def is_answering(path: Path) -> bool:
    return path.answering_since is not None


def wants_relay_echoes(direct: Path, relayed_via: str | None) -> bool:
    """Whether to ask the spoke through the other hubs too: from its first direct miss
    (so that by the third, the relays have answered) and while it is relayed. A spoke
    that answers directly costs one echo per interval, not one per hub."""
    return relayed_via is not None or (direct.answered_once and direct.misses > 0)


def route_via(
    current: str | None,
    direct: Path,
    via: Mapping[str, Path],
    hubs: Mapping[str, Path],
    order: Sequence[str],
    now: float,
    policy: RelayPolicy,
) -> str | None:
    """The hub to relay one spoke through (a Node name from `order`), None: directly.

    `current` is where it goes now, `direct` the echoes into the main device, `via` the
    echoes to the spoke through each other hub, `hubs` each other hub's own relay probe,
    `order` the other hubs in preference order (wgkube.desired.failover.preference).
    """
    fresh = Path()

    def usable(hub: str) -> bool:
        """May take a spoke now: its relay and the spoke through it both answer."""
        return is_answering(hubs.get(hub, fresh)) and is_answering(via.get(hub, fresh))

    if current is None:
        if not cannot_deliver(direct, policy):
            return None
        return next((h for h in order if usable(h)), None)
    broken = (
        current not in order
        or is_down(hubs.get(current, fresh), policy)
        or is_down(via.get(current, fresh), policy)
    )
    if broken:
        # Never through a hub that is down: another that answers, else directly.
        if is_answering(direct):
            return None
        return next((h for h in order if h != current and usable(h)), None)
    if direct.answering_since is not None and now - direct.answering_since >= policy.hold_down:
        return None
    return current


# -- the relay interfaces ----------------------------------------------------------------


def relay_interface_name(base: str, index: int) -> str:
    """The relay interface for the `index`-th other hub (from 1): `wg0-r1`, `wg0-r2`…
    (cut to the kernel's 15 characters from the base's end)."""
    suffix = f"-r{index}"
    return base[: 15 - len(suffix)] + suffix


def relay_ports(
    own: str, hubs: Iterable[HubRecord], listen_port: int
) -> tuple[tuple[str, int], ...]:
    """The port this hub keeps for each other hub: the main port + 1, + 2… by Node name
    (announced, so that the other hub's relay peer can dial it)."""
    others = sorted({h.node for h in hubs if h.node != own})[:MAX_RELAYS]
    return tuple((node, listen_port + 1 + i) for i, node in enumerate(others))


@dataclass(frozen=True, slots=True)
class RelayLink:
    """One relay interface: towards `hub`, whose one peer holds the shared range."""

    hub: str
    device: DeviceSpec
    peer: PeerSpec
    hub_routes: tuple[IPNetwork, ...]
    """The other hub's own addresses: routed here, not on the main device."""


def relay_links(
    device: DeviceSpec,
    own: str,
    hubs: Iterable[HubRecord],
    *,
    persistent_keepalive: int = 25,
) -> tuple[RelayLink, ...]:
    """A relay interface per other hub that keeps one for this hub (announced its port
    for us, and an endpoint); none at all with one hub. Same key as the main device: the
    other hub knows it already, and one key may serve several devices. Same addresses
    too (a host address may sit on several devices)."""
    hubs = tuple(hubs)
    links: list[RelayLink] = []
    ports = dict(relay_ports(own, hubs, device.listen_port or 0))
    for i, (node, port) in enumerate(sorted(ports.items()), start=1):
        other = next(h for h in hubs if h.node == node)
        theirs = other.relay_port_for(own)
        if theirs is None or other.endpoint is None or device.listen_port is None:
            continue  # a hub from before relays, or not yet told of us
        wanted = [n for n in (*other.allowed_ips, *other.addresses) if not is_default_route(n)]
        shared = normalize_networks(
            [
                *ipaddress.collapse_addresses(n for n in wanted if n.version == 4),
                *ipaddress.collapse_addresses(n for n in wanted if n.version == 6),
            ]
        )
        links.append(
            RelayLink(
                hub=node,
                device=DeviceSpec(
                    name=relay_interface_name(device.name, i),
                    private_key=device.private_key,
                    listen_port=port,
                    # The hub's own addresses here too: reverse-path filtering, even
                    # loose, drops what arrives on a device without an IPv4 address
                    # whenever the route back leaves by another (a relayed spoke's
                    # packet, a spoke's answer through the other hub).
                    addresses=device.addresses,
                    mtu=device.mtu,
                ),
                peer=PeerSpec(
                    public_key=other.public_key,
                    endpoint=Endpoint(other.endpoint.host, theirs),
                    allowed_ips=shared,
                    persistent_keepalive=persistent_keepalive,
                ),
                hub_routes=tuple(normalize_networks(other.addresses)),
            )
        )
    return tuple(links)


def split_routes(
    main: DesiredState,
    links: Sequence[RelayLink],
    relayed: Mapping[PublicKey, str],
) -> tuple[DesiredState, dict[str, DesiredState]]:
    """The main device's state and each relay interface's (by name): the routes of each
    relayed spoke (`relayed`: its key -> the hub it goes through) and of each other hub's
    own addresses move from the main device to that hub's relay interface. A spoke
    relayed through a hub without a link stays on the main device."""
    if main.peers is None:
        return main, {}
    moved: set[IPNetwork] = set()
    states: dict[str, DesiredState] = {}
    by_hub = {link.hub: link for link in links}
    routes: dict[str, set[IPNetwork]] = {link.hub: set(link.hub_routes) for link in links}
    for key, hub in relayed.items():
        spec = main.peers.get(key)
        if spec is None or hub not in by_hub:
            continue
        routes[hub].update(n for n in spec.allowed_ips if not is_default_route(n))
    for hub, nets in routes.items():
        nets &= main.routes  # only what the main device would route (accepted peers)
        link = by_hub[hub]
        moved |= nets
        states[link.device.name] = DesiredState(
            device=link.device,
            peers={link.peer.public_key: link.peer},
            routes=frozenset(nets),
        )
    return replace(main, routes=main.routes - moved), states
