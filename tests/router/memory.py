"""An in-memory route table for the router's tests: the same observe/apply contract as
wgkube.kernel.gateway.GatewayTable, with a fixed set of connected networks."""

from __future__ import annotations

from collections.abc import Sequence

from wgkube.desired.router import GatewayRoute
from wgkube.diff.gateway import (
    AddGatewayRoute,
    ChangeGateway,
    GatewayOperation,
    RemoveGatewayRoute,
)
from wgkube.domain.errors import RouteConflict
from wgkube.domain.net import IPNetwork
from wgkube.kernel.gateway import GatewayTable


class MemoryTable(GatewayTable):
    """The route table of a host with one connected network, in memory."""

    def __init__(self, connected: Sequence[IPNetwork]) -> None:
        super().__init__()
        self.routes: set[GatewayRoute] = set()
        self.foreign: set[IPNetwork] = set()
        """Prefixes someone else holds a route to: adding ours is a RouteConflict."""
        self._connected = frozenset(connected)

    async def observe(self) -> frozenset[GatewayRoute]:
        return frozenset(self.routes)

    async def connected(self) -> frozenset[IPNetwork]:
        return self._connected

    async def apply(self, ops: Sequence[GatewayOperation]) -> None:
        for op in ops:
            if isinstance(op, AddGatewayRoute):
                if op.route.network in self.foreign:
                    raise RouteConflict(f"route {op.route.network} is not wg-kube's")
                self.routes.add(op.route)
            elif isinstance(op, RemoveGatewayRoute):
                self.routes.discard(op.route)
            elif isinstance(op, ChangeGateway):
                self.routes.discard(GatewayRoute(op.network, op.old))
                self.routes.add(GatewayRoute(op.network, op.new))
            self.writes += 1
