"""The kernel port: the one interface through which wg-kube reads and changes a device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from wgkube.diff.model import ObservedPeer, ObservedState, Operation
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import IPNetwork

ROUTE_PROTOCOL = 87
"""rtnetlink protocol number that marks the routes wg-kube owns (`ip route ... proto 87`).

Only routes carrying it are read back and diffed, so routes made by people, DHCP or
the kernel are never touched, and a restart adopts ours instead of leaking or flushing.
"""

MAIN_TABLE = 254


class Kernel(Protocol):
    """Every adapter (netlink, userspace, memory) passes the same contract tests.

    - `observe` of a missing interface returns `ABSENT`, never raises.
    - `apply` performs operations in the order given; CreateLink/AddAddress/AddRoute of
      something present (adopted as it is) and RemovePeer/RemoveRoute/RemoveAddress of
      something absent succeed.
    - Operations on a missing interface (other than CreateLink) raise DeviceNotFound.
    - Library errors surface as `wgkube.domain.errors.KernelError` subclasses.
    - `writes` counts operations applied since the adapter was made.
    """

    name: str
    writes: int

    async def observe(self, ifname: str, *, device_only: bool = False) -> ObservedState:
        """The interface as it is. `device_only`: the link, its addresses and the
        device's own key, port and fwmark; peers and routes are reported empty (the
        routes are not dumped; the peers may come in the device's own dump and are
        dropped): what a reconcile that leaves peers untouched needs, and at 10,000
        peers the route dump is most of a full read."""
        ...

    async def peers(self, ifname: str) -> Mapping[PublicKey, ObservedPeer] | None:
        """Only the WireGuard peers (one device dump, no addresses or routes): what a
        metrics scrape needs. None when the interface does not exist."""
        ...

    async def apply(self, ifname: str, ops: Sequence[Operation]) -> None: ...

    async def move_route(
        self, ifname: str, destination: IPNetwork, *, among: Sequence[str]
    ) -> None:
        """Point our route to `destination` at `ifname` in one replace, from whichever of
        the interfaces `among` holds it (a failover between hubs: no moment without a
        route). Created when there is none; a route with that key that is not ours on one
        of them (another protocol, another device) is a RouteConflict and stays as it is."""
        ...

    async def delete(self, ifname: str) -> None:
        """Remove the interface and, with it, its peers, addresses and routes."""
        ...

    async def close(self) -> None: ...
