"""What the netlink and userspace adapters share: the apply loop and the rtnetlink half.

They differ only in how the WireGuard device itself is made, read and configured
(generic netlink or the UAPI socket); link, addresses and routes are rtnetlink for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wgkube.diff.model import (
    ABSENT,
    AddAddress,
    AddRoute,
    ConfigureDevice,
    CreateLink,
    ObservedPeer,
    ObservedState,
    Operation,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    SetMtu,
    SetUp,
    UpsertPeer,
)
from wgkube.domain.errors import DeviceNotFound
from wgkube.domain.keys import PrivateKey, PublicKey
from wgkube.domain.net import IPNetwork
from wgkube.kernel.port import MAIN_TABLE, ROUTE_PROTOCOL
from wgkube.kernel.rtnl import Rtnl

WgOperation = ConfigureDevice | UpsertPeer | RemovePeer
WG_OPERATIONS = (ConfigureDevice, UpsertPeer, RemovePeer)


@dataclass(frozen=True, slots=True)
class WgDevice:
    """The WireGuard half of an interface as read back."""

    private_key: PrivateKey | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: Mapping[PublicKey, ObservedPeer] = field(default_factory=dict)


class RtnlBackedKernel:
    """The apply loop; subclasses provide `_create_link`, `_wg_read` and `_wg_write`."""

    name = "abstract"

    def __init__(
        self,
        *,
        netns: str | None = None,
        route_protocol: int = ROUTE_PROTOCOL,
        route_table: int = MAIN_TABLE,
    ) -> None:
        self.writes = 0
        self.netns = netns
        self.route_protocol = route_protocol
        self.route_table = route_table
        self.rtnl = Rtnl(netns)
        self._reads: dict[str, asyncio.Task[WgDevice]] = {}

    # -- to provide ----------------------------------------------------------------------
    async def _create_link(self, ifname: str) -> None:
        raise NotImplementedError

    async def _wg_read(self, ifname: str) -> WgDevice:
        """Raise DeviceNotFound when the device is gone."""
        raise NotImplementedError

    async def _wg_write(self, ifname: str, ops: Sequence[WgOperation]) -> None:
        """Apply consecutive WireGuard operations, adding to `writes` as they land."""
        raise NotImplementedError

    # -- the port ------------------------------------------------------------------------
    async def observe(self, ifname: str, *, device_only: bool = False) -> ObservedState:
        link = await self.rtnl.link(ifname)
        if link is None:
            return ABSENT
        try:
            wg = await self._device(ifname, join=False)
        except DeviceNotFound:
            return ABSENT  # deleted between the two reads
        return ObservedState(
            exists=True,
            up=link.up,
            mtu=link.mtu,
            addresses=await self.rtnl.addresses(link.index),
            private_key=wg.private_key,
            listen_port=wg.listen_port,
            fwmark=wg.fwmark,
            # The device's own settings come in the same dump as its peers; the routes
            # are a dump of their own, skipped for `device_only`.
            peers={} if device_only else wg.peers,
            routes=frozenset()
            if device_only
            else await self.rtnl.routes(
                link.index, table=self.route_table, protocol=self.route_protocol
            ),
        )

    async def peers(self, ifname: str) -> Mapping[PublicKey, ObservedPeer] | None:
        try:
            return (await self._device(ifname, join=True)).peers
        except DeviceNotFound:
            return None

    async def _device(self, ifname: str, *, join: bool) -> WgDevice:
        """One read of the device. `join`: a read of it already under way answers this
        call too (`peers`: the metrics, the health reporter, the guard's learned
        endpoints show the device as of a few ms ago). 10,000 peers are ~10 MB while a
        read holds them, and the reporter's 10 s cadence met the hub's 60 s kernel
        resync at every resync: two reads held at once. `observe` never joins: a
        reconcile must read what its own last apply left."""
        current = self._reads.get(ifname)
        if join and current is not None:
            try:
                return await asyncio.shield(current)
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise
                # The read it joined was cancelled with its caller: this one reads anew.
        task = asyncio.ensure_future(self._wg_read(ifname))
        self._reads[ifname] = task
        try:
            return await task
        finally:
            if self._reads.get(ifname) is task:
                del self._reads[ifname]

    async def apply(self, ifname: str, ops: Sequence[Operation]) -> None:
        index: int | None = None
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, WG_OPERATIONS):
                # A run of device and peer changes goes in as few writes as the backend allows.
                j = i
                while j < len(ops) and isinstance(ops[j], WG_OPERATIONS):
                    j += 1
                if index is None:
                    index = await self.rtnl.index(ifname)
                run: list[WgOperation] = [o for o in ops[i:j] if isinstance(o, WG_OPERATIONS)]
                await self._wg_write(ifname, run)
                i = j
                continue
            if isinstance(op, CreateLink):
                await self._create_link(op.name)
                index = None
            elif isinstance(op, AddRoute) and i + 1 < len(ops) and isinstance(ops[i + 1], AddRoute):
                # A run of new routes goes in batches over the one socket (Rtnl.add_routes).
                j = i
                while j < len(ops) and isinstance(ops[j], AddRoute):
                    j += 1
                if index is None:
                    index = await self.rtnl.index(ifname)
                nets = [o.destination for o in ops[i:j] if isinstance(o, AddRoute)]
                await self.rtnl.add_routes(
                    index,
                    nets,
                    table=self.route_table,
                    protocol=self.route_protocol,
                    landed=self._landed,
                )
                i = j
                continue
            else:
                if index is None:
                    index = await self.rtnl.index(ifname)
                await self._rtnl_apply(index, op)
            self.writes += 1
            i += 1

    async def _rtnl_apply(self, index: int, op: Operation) -> None:
        match op:
            case SetMtu(mtu):
                await self.rtnl.set_link(index, mtu=mtu)
            case SetUp():
                await self.rtnl.set_link(index, state="up")
            case AddAddress(address):
                await self.rtnl.add_address(index, address)
            case RemoveAddress(address):
                await self.rtnl.remove_address(index, address)
            case AddRoute(net):
                await self.rtnl.add_route(
                    index, net, table=self.route_table, protocol=self.route_protocol
                )
            case RemoveRoute(net):
                await self.rtnl.remove_route(
                    index, net, table=self.route_table, protocol=self.route_protocol
                )
            case _:  # pragma: no cover - WireGuard operations never reach here
                raise AssertionError(op)

    def _landed(self) -> None:
        self.writes += 1

    async def move_route(
        self, ifname: str, destination: IPNetwork, *, among: Sequence[str]
    ) -> None:
        index = await self.rtnl.index(ifname)
        ours = {index}
        for name in among:
            link = await self.rtnl.link(name)
            if link is not None:
                ours.add(link.index)
        await self.rtnl.move_route(
            index, destination, ours, table=self.route_table, protocol=self.route_protocol
        )
        self.writes += 1

    async def delete(self, ifname: str) -> None:
        if await self.rtnl.delete_link(ifname):
            self.writes += 1

    async def close(self) -> None:
        self.rtnl.close()
