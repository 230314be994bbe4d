"""The router's kernel adapter: its gateway routes (proto 87) and the host's connected
networks, read and changed through rtnetlink; nothing else on the host is touched."""

from __future__ import annotations

from collections.abc import Sequence

from wgkube.desired.router import GatewayRoute
from wgkube.diff.gateway import (
    AddGatewayRoute,
    ChangeGateway,
    GatewayOperation,
    RemoveGatewayRoute,
)
from wgkube.domain.net import IPNetwork
from wgkube.kernel.port import MAIN_TABLE, ROUTE_PROTOCOL
from wgkube.kernel.rtnl import Rtnl


class GatewayTable:
    """Routes `NET via GATEWAY proto <route_protocol>` in `route_table` (in `netns`)."""

    def __init__(
        self,
        *,
        netns: str | None = None,
        route_protocol: int = ROUTE_PROTOCOL,
        route_table: int = MAIN_TABLE,
    ) -> None:
        self.rtnl = Rtnl(netns)
        self.protocol = route_protocol
        self.table = route_table
        self.writes = 0
        """Route operations applied since the adapter was made."""

    async def observe(self) -> frozenset[GatewayRoute]:
        return await self.rtnl.gateway_routes(table=self.table, protocol=self.protocol)

    async def connected(self) -> frozenset[IPNetwork]:
        """Networks on this host's links, from the main table (where the kernel looks
        when it checks that a gateway is on-link)."""
        return await self.rtnl.connected_networks(table=MAIN_TABLE, protocol=self.protocol)

    async def apply(self, ops: Sequence[GatewayOperation]) -> None:
        """In the order given; the first failure stops (the next reconcile retries)."""
        kw = {"table": self.table, "protocol": self.protocol}
        for op in ops:
            if isinstance(op, AddGatewayRoute):
                await self.rtnl.add_gateway_route(op.route, **kw)
            elif isinstance(op, ChangeGateway):
                await self.rtnl.change_gateway(op.network, op.new, **kw)
            elif isinstance(op, RemoveGatewayRoute):
                await self.rtnl.remove_gateway_route(op.route, **kw)
            self.writes += 1

    async def close(self) -> None:
        self.rtnl.close()
