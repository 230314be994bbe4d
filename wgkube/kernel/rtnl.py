"""The rtnetlink half of the real adapters: link, MTU, up, addresses and owned routes.

Both the kernel-WireGuard and the wireguard-go adapters keep the interface's addresses
and routes in the kernel, so this one module does that work for both.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import os
import struct
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from socket import AF_INET, AF_INET6
from typing import Any, NoReturn

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    nla_slot,
    nlmsg,
    nlmsg_base,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_GETROUTE, RTM_NEWROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from wgkube.desired.protected import PROTOCOL_NAMES, HostAddress, HostRoute
from wgkube.desired.router import GatewayRoute
from wgkube.domain.errors import DeviceNotFound, KernelError, OperationRejected, RouteConflict
from wgkube.domain.net import IPAddress, IPInterface, IPNetwork, shared_network

_IGNORED_ON_REMOVE = frozenset({errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL})
"""What the kernel answers when asked to delete a route or an address that is not there."""


REJECTED_ERRNOS = frozenset(
    {errno.EINVAL, errno.ERANGE, errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EMSGSIZE}
)
"""Answers about the values of one request, not the device: OperationRejected."""

LOCAL_TABLE = 255
RTN_UNICAST = 1
IPV6_DEFAULT_METRIC = 1024
"""What the kernel gives an IPv6 route added without a metric; IPv4 gets 0."""


ADD_BATCH = 256
"""Route requests per send: the answers of a batch that is all refused fit the socket's
receive buffer."""
ADD_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
"""`ip route add`: create, never replace (EEXIST when the key is held)."""
FLAGS_OFFSET = 6
"""nlmsghdr.nlmsg_flags."""


def route_request(index: int, net: IPNetwork, *, table: int, protocol: int) -> rtmsg:
    """RTM_NEWROUTE of a unicast route to `net` through link `index`, as pyroute2's
    `route("add", dst=..., oif=..., table=..., proto=...)` builds it (a test compares
    the bytes): the table in RTA_TABLE, and in the header when it fits."""
    msg = rtmsg()
    msg["family"] = AF_INET if net.version == 4 else AF_INET6
    msg["dst_len"] = net.prefixlen
    msg["table"] = table if 0 < table < 255 else 254
    msg["proto"] = protocol
    msg["scope"] = 0  # RT_SCOPE_UNIVERSE
    msg["type"] = RTN_UNICAST
    msg["attrs"] = [
        ("RTA_DST", str(net.network_address)),
        ("RTA_OIF", index),
        ("RTA_TABLE", table),
    ]
    return msg


_PLACEHOLDER = {4: ipaddress.ip_network("192.0.2.0/24"), 6: ipaddress.ip_network("2001:db8::/64")}
RTA_DST = 1
DST_LEN_OFFSET = 17
"""rtmsg.dst_len: after the 16-byte nlmsghdr, the family byte."""
SEQ_OFFSET = 8
"""nlmsghdr.nlmsg_seq."""


OWN_SEQ_BASE = 0x10000
"""Sequence numbers wg-kube gives its batched route requests: above pyroute2's own pool
(0xFF-0xFFFF), so the two never meet on the one socket."""


class _OwnSequence(NetlinkRequest):  # type: ignore[misc]
    """A request with a sequence number of ours (OWN_SEQ_BASE up), not pyroute2's pool's.

    The pool (pyroute2.common.AddrPool) keeps every released number banned for the next
    255 allocations and walks that list and its bitmap on each one: ~15 us a request,
    0.15 s for 10,000 routes. Ours never enter it: cleaning up frees the answer's queue
    only (a number outside the pool given back to it would break its next allocation).
    """

    def cleanup(self) -> None:
        _forget(self.sock, self.msg_seq)


def _forget(ipr: AsyncIPRoute, seq: int) -> None:
    """Drop what the socket keeps for sequence number `seq` (once or more: no error)."""
    ipr.msg_queue.queues.pop(seq, None)
    ipr.marshal.seq_map.pop(seq, None)


def _refusal(ipr: AsyncIPRoute, seq: int) -> NetlinkError | None:
    """The kernel's refusal of request `seq`, sent without NLM_F_ACK, when it refused it.

    Such a request is answered only when it fails (netlink_rcv_skb acks on NLM_F_ACK or
    an error), in the order of the requests: once a later request's ack was read, an
    earlier refusal is in its queue already, or there is none."""
    queue = ipr.msg_queue.queues.get(seq)
    if queue is None or queue.empty():
        return None
    for msg in ipr.marshal.parse(queue.get_nowait(), seq):
        error = msg["header"].get("error")
        if isinstance(error, NetlinkError):
            return error
    return None


class RouteRequests:
    """RTM_NEWROUTE requests to link `index` in one table with one protocol, as bytes.

    pyroute2 encodes one request per address family (route_request, to a placeholder
    destination); each route's request is that one with its sequence number, prefix
    length and destination address put in: the three fields that differ between two
    routes here (a test compares the result with what `route("add", ...)` sends). The
    encoding is what costs in pyroute2 (~80 us a message), not the kernel's work.
    """

    def __init__(self, ipr: AsyncIPRoute, index: int, *, table: int, protocol: int) -> None:
        self._ipr = ipr
        self._index = index
        self._table = table
        self._protocol = protocol
        self._templates: dict[int, tuple[bytes, int]] = {}

    async def encode(self, net: IPNetwork, seq: int, *, ack: bool = True) -> bytes:
        """The request; without `ack`, the kernel answers it only when it refuses it."""
        template = self._templates.get(net.version)
        if template is None:
            template = self._templates[net.version] = await self._template(net.version)
        data, dst = template
        packed = net.network_address.packed
        out = bytearray(data)
        struct.pack_into("=I", out, SEQ_OFFSET, seq)
        if not ack:
            struct.pack_into("=H", out, FLAGS_OFFSET, ADD_FLAGS & ~NLM_F_ACK)
        out[DST_LEN_OFFSET] = net.prefixlen
        out[dst : dst + len(packed)] = packed
        return bytes(out)

    async def _template(self, version: int) -> tuple[bytes, int]:
        request = NetlinkRequest(
            self._ipr,
            route_request(
                self._index, _PLACEHOLDER[version], table=self._table, protocol=self._protocol
            ),
            msg_type=RTM_NEWROUTE,
            msg_flags=ADD_FLAGS,
        )
        await request.prepare()
        data = bytes(request.msg.data)
        request.cleanup()
        offset = 16 + 12  # nlmsghdr, rtmsg: then the attributes
        while offset + 4 <= len(data):
            length, kind = struct.unpack_from("=HH", data, offset)
            if kind == RTA_DST:
                return data, offset + 4
            offset += (length + 3) & ~3
        raise KernelError("pyroute2 encoded a route request without RTA_DST")


def translate(exc: BaseException, what: str) -> NoReturn:
    """Raise the wg-kube error for a library error; ENODEV means the device is missing."""
    if isinstance(exc, NetlinkError) and exc.code == errno.ENODEV:
        raise DeviceNotFound(f"{what}: no such device") from exc
    if isinstance(exc, NetlinkError) and exc.code in REJECTED_ERRNOS:
        answer = f"{os.strerror(exc.code)} (errno {exc.code})"
        raise OperationRejected(f"{what}: {answer}", answer=answer) from exc
    if isinstance(exc, NetlinkError):
        raise KernelError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
    raise KernelError(f"{what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    up: bool
    mtu: int
    kind: str | None


class Rtnl:
    """One rtnetlink connection (in `netns` when given), opened lazily and reused.

    pyroute2 forks a helper to make a socket inside a named namespace, so a connection
    is made once per adapter, not once per call.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: AsyncIPRoute | None = None
        self._seqs = itertools.count()

    async def _conn(self) -> AsyncIPRoute:
        if self._ipr is None:
            # flags=0: a namespace that does not exist is an error, not silently created.
            ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
            try:
                await ipr.setup_endpoint()
            except Exception as exc:
                ipr.close()
                translate(exc, f"open rtnetlink (netns {self.netns})")
            self._ipr = ipr
        return self._ipr

    def _next_seq(self) -> int:
        return OWN_SEQ_BASE + next(self._seqs) % (2**32 - OWN_SEQ_BASE)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # -- links -----------------------------------------------------------------------
    async def link(self, ifname: str) -> LinkInfo | None:
        ipr = await self._conn()
        try:
            (msg,) = await ipr.link("get", ifname=ifname)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            translate(exc, f"get link {ifname}")
        kind = None
        linkinfo = msg.get_attr("IFLA_LINKINFO")
        if linkinfo is not None:
            kind = linkinfo.get_attr("IFLA_INFO_KIND")
        return LinkInfo(
            index=int(msg["index"]),
            up=bool(msg["flags"] & 1),  # IFF_UP, what `ip link set up` sets
            mtu=int(msg.get_attr("IFLA_MTU")),
            kind=kind,
        )

    async def index(self, ifname: str) -> int:
        info = await self.link(ifname)
        if info is None:
            raise DeviceNotFound(f"interface {ifname} does not exist")
        return info.index

    async def create_link(self, ifname: str, kind: str) -> None:
        ipr = await self._conn()
        try:
            await ipr.link("add", ifname=ifname, kind=kind)
        except NetlinkError as exc:
            translate(exc, f"create {kind} link {ifname}")

    async def delete_link(self, ifname: str) -> bool:
        """Delete the link; False when it was not there."""
        info = await self.link(ifname)
        if info is None:
            return False
        ipr = await self._conn()
        try:
            await ipr.link("del", index=info.index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            translate(exc, f"delete link {ifname}")
        return True

    async def set_link(self, index: int, **kwargs: Any) -> None:
        ipr = await self._conn()
        try:
            await ipr.link("set", index=index, **kwargs)
        except NetlinkError as exc:
            translate(exc, f"set link #{index} {kwargs}")

    # -- addresses ---------------------------------------------------------------------
    async def addresses(self, index: int) -> frozenset[IPInterface]:
        ipr = await self._conn()
        found: set[IPInterface] = set()
        try:
            async for msg in dump_messages(await ipr.addr("dump", index=index)):
                if msg["index"] != index:
                    continue
                addr = msg.get_attr("IFA_ADDRESS")
                if msg["family"] == AF_INET:
                    # On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
                    addr = msg.get_attr("IFA_LOCAL") or addr
                found.add(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        except NetlinkError as exc:
            translate(exc, f"list addresses of #{index}")
        return frozenset(a for a in found if not _is_link_local(a))

    async def add_address(self, index: int, address: IPInterface) -> None:
        ipr = await self._conn()
        try:
            # replace: present already is success, as the port demands.
            await ipr.addr(
                "replace", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            translate(exc, f"add address {address}")

    async def remove_address(self, index: int, address: IPInterface) -> None:
        ipr = await self._conn()
        # Deleting an IPv4 primary address deletes the secondaries of its subnet too
        # (unless the promote_secondaries sysctl is set): put back those we did not ask
        # to remove, so that re-addressing within one subnet works in place.
        siblings: frozenset[IPInterface] = frozenset()
        if address.version == 4:
            siblings = frozenset(
                a
                for a in await self.addresses(index)
                if a.network == address.network and a != address
            )
        try:
            await ipr.addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code in _IGNORED_ON_REMOVE:
                return
            translate(exc, f"remove address {address}")
        if siblings:
            for lost in siblings - await self.addresses(index):
                await self.add_address(index, lost)

    # -- gateway routes (wg-kube router: `NET via GATEWAY proto 87`, no interface) ------
    async def gateway_routes(self, *, table: int, protocol: int) -> frozenset[GatewayRoute]:
        """Routes in `table` that carry `protocol` and a gateway: exactly the router's."""
        ipr = await self._conn()
        found: set[GatewayRoute] = set()
        for family in (AF_INET, AF_INET6):
            try:
                dump = await ipr.route("dump", family=family, table=table, proto=protocol)
                async for msg in dump_messages(dump):
                    if msg["proto"] != protocol or msg.get_attr("RTA_MULTIPATH"):
                        continue
                    if (msg.get_attr("RTA_TABLE") or msg["table"]) != table:
                        continue
                    gateway = msg.get_attr("RTA_GATEWAY")
                    if gateway is None:
                        continue  # an interface route of the hub or a spoke, not ours here
                    found.add(
                        GatewayRoute(_route_network(msg, family), ipaddress.ip_address(gateway))
                    )
            except NetlinkError as exc:
                translate(exc, "list gateway routes")
        return frozenset(found)

    async def connected_networks(self, *, table: int, protocol: int) -> frozenset[IPNetwork]:
        """Networks this host reaches without a gateway (routes in `table` with a device
        and no next hop, not ours): where a route's gateway may be."""
        ipr = await self._conn()
        found: set[IPNetwork] = set()
        for family in (AF_INET, AF_INET6):
            try:
                async for msg in dump_messages(await ipr.route("dump", family=family, table=table)):
                    if msg["type"] != RTN_UNICAST or msg["proto"] == protocol:
                        continue
                    if (msg.get_attr("RTA_TABLE") or msg["table"]) != table:
                        continue
                    if not msg.get_attr("RTA_OIF") or msg.get_attr("RTA_GATEWAY"):
                        continue
                    if msg.get_attr("RTA_MULTIPATH") or msg.get_attr("RTA_VIA"):
                        continue
                    found.add(_route_network(msg, family))
            except NetlinkError as exc:
                translate(exc, "list connected routes")
        return frozenset(found)

    async def add_gateway_route(self, route: GatewayRoute, *, table: int, protocol: int) -> None:
        """Create the route, never replace one: a route to the same key (destination,
        table, metric) that is ours with this gateway is adopted; any other is a
        RouteConflict and stays as it is."""
        ipr = await self._conn()
        try:
            # "add" is NLM_F_CREATE|NLM_F_EXCL: EEXIST rather than overwriting a holder.
            await ipr.route(
                "add",
                dst=str(route.network),
                gateway=str(route.gateway),
                table=table,
                proto=protocol,
            )
            return
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                translate(exc, f"add route {route}")
            answer = f"{exc.args[1] if len(exc.args) > 1 else exc} (errno {exc.code})"
        holders = await self._gateway_holders(route.network, table=table)
        if any(p == protocol and gw == route.gateway for p, gw in holders):
            return  # ours, from before a restart or a race: adopted as it is
        raise RouteConflict(
            f"route {route.network} (table {table}) already exists and is not wg-kube's: "
            f"{_holders_text(holders)}; left as it is",
            answer=answer,
        )

    async def change_gateway(
        self, network: IPNetwork, gateway: IPAddress, *, table: int, protocol: int
    ) -> None:
        """Move our route to `network` to `gateway` in place (NLM_F_REPLACE), only when
        every route holding that key is ours; with none, an exclusive add."""
        holders = await self._gateway_holders(network, table=table)
        if not holders:
            await self.add_gateway_route(
                GatewayRoute(network, gateway), table=table, protocol=protocol
            )
            return
        if any(p != protocol for p, _ in holders):
            raise RouteConflict(
                f"route {network} (table {table}) is not wg-kube's: {_holders_text(holders)}; "
                "left as it is"
            )
        ipr = await self._conn()
        try:
            await ipr.route(
                "replace", dst=str(network), gateway=str(gateway), table=table, proto=protocol
            )
        except NetlinkError as exc:
            translate(exc, f"change route {network} to via {gateway}")

    async def remove_gateway_route(self, route: GatewayRoute, *, table: int, protocol: int) -> None:
        # Protocol and gateway are part of the match: only our route is deleted.
        ipr = await self._conn()
        try:
            await ipr.route(
                "del",
                dst=str(route.network),
                gateway=str(route.gateway),
                table=table,
                proto=protocol,
            )
        except NetlinkError as exc:
            if exc.code in _IGNORED_ON_REMOVE:
                return
            translate(exc, f"remove route {route}")

    async def _gateway_holders(
        self, network: IPNetwork, *, table: int
    ) -> list[tuple[int, IPAddress | None]]:
        """(protocol, gateway) of the routes to exactly `network` in `table` at the metric
        a route of ours gets: what an exclusive add collides with."""
        ipr = await self._conn()
        family = AF_INET if network.version == 4 else AF_INET6
        metric = 0 if network.version == 4 else IPV6_DEFAULT_METRIC
        found: list[tuple[int, IPAddress | None]] = []
        try:
            async for msg in dump_messages(await ipr.route("dump", family=family, table=table)):
                if (msg.get_attr("RTA_TABLE") or msg["table"]) != table:
                    continue
                if (
                    _route_network(msg, family) != network
                    or (msg.get_attr("RTA_PRIORITY") or 0) != metric
                ):
                    continue
                gateway = msg.get_attr("RTA_GATEWAY")
                found.append(
                    (int(msg["proto"]), ipaddress.ip_address(gateway) if gateway else None)
                )
        except NetlinkError as exc:
            translate(exc, f"read the routes to {network}")
        return found

    # -- routes --------------------------------------------------------------------------
    async def routes(self, index: int, *, table: int, protocol: int) -> frozenset[IPNetwork]:
        """Routes through `index` in `table` that carry `protocol`: exactly the ones we own."""
        ipr = await self._conn()
        found: set[IPNetwork] = set()
        for family in (AF_INET, AF_INET6):
            try:
                dump = await ipr.route("dump", family=family, table=table, proto=protocol)
                async for msg in dump_messages(dump):
                    if msg["proto"] != protocol or msg.get_attr("RTA_OIF") != index:
                        continue
                    if (msg.get_attr("RTA_TABLE") or msg["table"]) != table:
                        continue
                    found.add(_route_network(msg, family))
            except NetlinkError as exc:
                translate(exc, f"list routes of #{index}")
        return frozenset(found)

    async def add_route(self, index: int, net: IPNetwork, *, table: int, protocol: int) -> None:
        """Create the route, never replace one: a route with the same key (destination,
        table, metric) that is ours (`protocol`, through `index`) is adopted; any other
        (a connected route, DHCP's, a person's) is a RouteConflict and stays as it is."""
        ipr = await self._conn()
        try:
            # "add" sends NLM_F_CREATE|NLM_F_EXCL: the kernel answers EEXIST instead of
            # overwriting what holds that key. ("replace" once took over the kernel's own
            # connected route of a subnet the hub advertised, and the underlay went.)
            await ipr.route("add", dst=str(net), oif=index, table=table, proto=protocol)
        except NetlinkError as exc:
            await self._add_refused(index, net, exc, table=table, protocol=protocol)

    async def add_routes(
        self,
        index: int,
        nets: Sequence[IPNetwork],
        *,
        table: int,
        protocol: int,
        landed: Callable[[], None],
    ) -> None:
        """`add_route` for each of `nets`, ADD_BATCH requests per send on the one socket.

        The same request as `add_route` (RouteRequests: pyroute2's encoding of it),
        without the per-call argument processing, encoding and round trip that cost
        ~0.27 ms a route (2.7 s at 10,000). Only a batch's last request asks for an ack:
        the kernel answers the others only to refuse them, which saves reading and
        decoding 255 acks in 256 (~0.05 ms each), and once the last one is acked every
        refusal before it has been read (_refusal).
        `landed()` is called once per route in place (added or adopted as ours); the
        first refusal, in the order of `nets`, is raised after its batch was answered,
        and later batches are not sent.
        """
        ipr = await self._conn()
        encoder = RouteRequests(ipr, index, table=table, protocol=protocol)
        for start in range(0, len(nets), ADD_BATCH):
            batch = nets[start : start + ADD_BATCH]
            seqs = [self._next_seq() for _ in batch]
            last = _OwnSequence(
                ipr, rtmsg(), msg_type=RTM_NEWROUTE, msg_flags=ADD_FLAGS, msg_seq=seqs[-1]
            )
            answers: list[NetlinkError | None] = [None] * len(batch)
            try:
                data = bytearray()
                for i, (net, seq) in enumerate(zip(batch, seqs, strict=True)):
                    # What request.prepare() does, with the bytes made from the template
                    # instead of encoding the message again.
                    data += await encoder.encode(net, seq, ack=i == len(batch) - 1)
                    ipr.msg_queue.ensure_tag(seq)
                ipr.send(bytes(data))
                try:
                    async for _ in last.response():  # ends with its ack; cleans up
                        pass
                except NetlinkError as exc:
                    answers[-1] = exc
                for i, seq in enumerate(seqs[:-1]):
                    answers[i] = _refusal(ipr, seq)
            except (OSError, NetlinkError) as exc:
                translate(exc, f"add {len(batch)} routes")
            finally:
                for seq in seqs:
                    _forget(ipr, seq)
            refused: list[tuple[IPNetwork, NetlinkError]] = []
            for net, answer in zip(batch, answers, strict=True):
                if answer is None:
                    landed()
                else:
                    refused.append((net, answer))
            for net, answer in refused:
                await self._add_refused(index, net, answer, table=table, protocol=protocol)
                landed()  # adopted: ours already

    async def _add_refused(
        self, index: int, net: IPNetwork, exc: NetlinkError, *, table: int, protocol: int
    ) -> None:
        """After the kernel refused to add `net`: adopt it when the route holding its key
        is ours, else raise what the refusal means."""
        if exc.code != errno.EEXIST:
            translate(exc, f"add route {net}")
        answer = f"{exc.args[1] if len(exc.args) > 1 else exc} (errno {exc.code})"
        holders = await self._same_key(net, table=table)
        if any(proto == protocol and oif == index for proto, oif, _ in holders):
            return  # ours, from before a restart or a race: adopted as it is
        owner = "; ".join([await self._describe(*h) for h in holders]) or "an unknown owner"
        raise RouteConflict(
            f"route {net} (table {table}) already exists and is not wg-kube's: {owner}; "
            "left as it is",
            answer=answer,
        )

    async def move_route(
        self, index: int, net: IPNetwork, ours: Collection[int], *, table: int, protocol: int
    ) -> None:
        """One NLM_F_REPLACE of our route to `net` (`protocol`, through one of the links
        `ours`) to `index`. Only after reading who holds the key: any other route to `net`
        is never replaced, as `add_route` never does."""
        holders = await self._same_key(net, table=table)
        foreign = [h for h in holders if h[0] != protocol or h[1] not in ours]
        if foreign:
            owner = "; ".join([await self._describe(*h) for h in foreign])
            raise RouteConflict(
                f"route {net} (table {table}) already exists and is not wg-kube's: {owner}; "
                "left as it is",
                answer="not replaced",
            )
        if any(oif == index for _, oif, _ in holders):
            return
        ipr = await self._conn()
        try:
            await ipr.route("replace", dst=str(net), oif=index, table=table, proto=protocol)
        except NetlinkError as exc:
            translate(exc, f"move route {net}")

    async def _same_key(self, net: IPNetwork, *, table: int) -> list[tuple[int, int, Any]]:
        """(protocol, oif, gateway) of the routes to exactly `net` in `table` at the metric
        a route of ours gets: the ones an exclusive add collides with."""
        ipr = await self._conn()
        family = AF_INET if net.version == 4 else AF_INET6
        metric = 0 if net.version == 4 else IPV6_DEFAULT_METRIC
        found: list[tuple[int, int, Any]] = []
        try:
            async for msg in dump_messages(await ipr.route("dump", family=family, table=table)):
                if (msg.get_attr("RTA_TABLE") or msg["table"]) != table:
                    continue
                if _route_network(msg, family) != net:
                    continue
                if (msg.get_attr("RTA_PRIORITY") or 0) != metric:
                    continue
                found.append(
                    (int(msg["proto"]), msg.get_attr("RTA_OIF") or 0, msg.get_attr("RTA_GATEWAY"))
                )
        except NetlinkError as exc:
            translate(exc, f"read the routes to {net}")
        return found

    async def _describe(self, protocol: int, oif: int, gateway: Any) -> str:
        proto = PROTOCOL_NAMES.get(protocol, str(protocol))
        via = f" via {gateway}" if gateway else ""
        device = f" dev {await self._ifname(oif)}" if oif else ""
        return f"proto {proto}{via}{device}"

    async def _ifname(self, index: int) -> str:
        ipr = await self._conn()
        try:
            (msg,) = await ipr.link("get", index=index)
            return str(msg.get_attr("IFLA_IFNAME"))
        except NetlinkError:
            return f"#{index}"

    async def remove_route(self, index: int, net: IPNetwork, *, table: int, protocol: int) -> None:
        # Protocol and oif are part of the match (IPv4 and IPv6 alike): the kernel deletes
        # only our route, never another owner's route to the same destination.
        ipr = await self._conn()
        try:
            await ipr.route("del", dst=str(net), oif=index, table=table, proto=protocol)
        except NetlinkError as exc:
            if exc.code in _IGNORED_ON_REMOVE:
                return
            translate(exc, f"remove route {net}")

    # -- the host, for the set of things no peer may capture ----------------------------
    async def host(
        self, *, skip_protocol: int | None = None
    ) -> tuple[list[HostAddress], list[HostRoute]]:
        """Every address and every unicast route outside the local table, as read;
        routes of `skip_protocol` (wg-kube's own: 10,000 at a large hub) left out."""
        ipr = await self._conn()
        names: dict[int, str] = {}
        addresses: list[HostAddress] = []
        routes: list[HostRoute] = []
        try:
            async for msg in dump_messages(await ipr.link("dump")):
                names[int(msg["index"])] = str(msg.get_attr("IFLA_IFNAME"))
            async for msg in dump_messages(await ipr.addr("dump")):
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if addr is None:
                    continue
                interface = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")
                addresses.append(HostAddress(interface, names.get(msg["index"], "?")))
            for family in (AF_INET, AF_INET6):
                dump = await _routes_without(ipr, family, skip_protocol)
                async for msg in dump_messages(dump):
                    if msg is _SKIPPED or msg["type"] != RTN_UNICAST:
                        continue
                    if (msg.get_attr("RTA_TABLE") or msg["table"]) == LOCAL_TABLE:
                        continue
                    hops = [(msg.get_attr("RTA_OIF"), msg.get_attr("RTA_GATEWAY"))]
                    for hop in msg.get_attr("RTA_MULTIPATH") or ():
                        hops.append((hop["oif"], hop.get_attr("RTA_GATEWAY")))
                    gateways: tuple[IPAddress, ...] = tuple(
                        ipaddress.ip_address(gw) for _, gw in hops if gw
                    )
                    oif = next((o for o, _ in hops if o), 0)
                    routes.append(
                        HostRoute(
                            network=_route_network(msg, family),
                            device=names.get(oif, "?"),
                            protocol=int(msg["proto"]),
                            gateways=gateways,
                            table=int(msg.get_attr("RTA_TABLE") or msg["table"]),
                        )
                    )
        except NetlinkError as exc:
            translate(exc, "read the host's addresses and routes")
        return addresses, routes


_SKIPPED = nlmsg()
"""What a route dump of `_routes_without` answers for a route it did not decode."""
_SKIPPED["header"].update(type=RTM_NEWROUTE, flags=NLM_F_MULTI)
PROTOCOL_OFFSET = 16 + 5
"""rtmsg.protocol: after the 16-byte nlmsghdr, family, dst_len, src_len, tos, table."""


async def _routes_without(ipr: AsyncIPRoute, family: int, protocol: int | None) -> Any:
    """`route("dump", family=family)`, with the routes of `protocol` left undecoded.

    pyroute2 decodes every answer of a dump before anyone sees it (~45 us a route);
    the routes of wg-kube's own protocol are 10,000 at a large hub, and the host view
    drops them. The request carries a parser of its own (pyroute2's per-request hook,
    NetlinkRequest(parser=)): it reads the protocol byte of each route and answers
    _SKIPPED for ours, which the reader skips, and pyroute2's parser for the rest. A
    stand-in, not nothing: pyroute2 ends a dump at a datagram that parses to no message.
    """
    msg = rtmsg()
    msg["family"] = family
    parser = None
    if protocol is not None:
        decode = ipr.marshal.parse_one_message

        def parser(data: bytes, offset: int, length: int) -> Any:
            _, kind, flags, seq = struct.unpack_from("=IHHI", data, offset)
            if kind == RTM_NEWROUTE and data[offset + PROTOCOL_OFFSET] == protocol:
                return _SKIPPED
            return decode(kind, flags, seq, data, offset, length)

    request = NetlinkRequest(
        ipr, msg, msg_type=RTM_GETROUTE, msg_flags=NLM_F_REQUEST | NLM_F_DUMP, parser=parser
    )
    await request.send()
    return request.response()


def _route_network(msg: Any, family: int) -> IPNetwork:
    dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == AF_INET else "::")
    return shared_network(f"{dst}/{msg['dst_len']}")


DUMP_TURN = 128
"""Messages of a dump decoded between two turns of the event loop."""


async def dump_messages(result: Any) -> AsyncIterator[Any]:
    """pyroute2 dumps answer with an async iterator; some calls with a plain list.

    A dump whose answers are already queued never suspends: 10,000 routes are ~0.7 s
    of decoding in one stretch, which a Node change arriving then (the kernel resync
    reads them every minute) would wait out. Every DUMP_TURN messages the loop gets a
    turn. Each message is released (`release`) once the reader asks for the next one:
    a reader keeps what it reads of a message, never the message itself.
    """
    count = 0
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
            release(item)
            count += 1
            if count % DUMP_TURN == 0:
                await asyncio.sleep(0)
    else:
        for item in result:
            yield item
            release(item)


def release(msg: Any) -> None:
    """Break the reference cycles of a decoded pyroute2 message, so that refcounting
    frees it as soon as the reader drops it.

    Every pyroute2 message and attribute keeps `chain = [self]`, and some attributes
    their parent (`own_parent`): refcounting alone never frees one. A dump of 10,000
    routes left ~1M objects (~25 MB at 10,000 peers) to the cyclic collector, which the
    hub's collector thresholds (wgkube.startup.tune_gc) reach only at a full collection,
    after the next dump has added its own. Clearing those two links in the message and
    every attribute under it (~2.5 us a route) leaves no cycle; a full collection after
    each large dump would cost tens of ms beside the hub's heap, and the dump would
    still be held whole until it ran.
    """
    stack = [msg]
    while stack:
        obj = stack.pop()
        if not isinstance(obj, nlmsg_base):
            continue
        obj.chain = None
        obj.parent = None
        for slot in dict.get(obj, "attrs", ()):
            if isinstance(slot, nla_slot):
                stack.append(slot.cell[1])
        value = getattr(obj, "value", None)  # the entries of an array attribute
        if isinstance(value, list):
            stack.extend(value)


def _holders_text(holders: list[tuple[int, IPAddress | None]]) -> str:
    if not holders:
        return "an unknown owner"
    return "; ".join(
        f"proto {protocol}" + (f" via {gateway}" if gateway else "")
        for protocol, gateway in holders
    )


def _is_link_local(address: IPInterface) -> bool:
    # The kernel adds an fe80:: address to some links by itself; it is not ours to diff.
    return address.version == 6 and address.ip.is_link_local
