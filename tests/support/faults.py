"""A fault-injecting kernel: wraps any adapter and refuses chosen operations as the kernel
would, where no real value makes the kernel give that answer.

Rules are plain data (JSON in `WGKUBE_TEST_FAULTS` for a hub process started through
tests.support.faulty_hub) so that a test in one process can arm a hub in another.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wgkube.diff.model import (
    AddAddress,
    AddRoute,
    ObservedPeer,
    ObservedState,
    Operation,
    UpsertPeer,
)
from wgkube.domain.errors import KernelError, OperationRejected, RouteConflict
from wgkube.domain.keys import PublicKey
from wgkube.domain.net import IPNetwork
from wgkube.kernel.port import Kernel

FAULTS_ENV = "WGKUBE_TEST_FAULTS"


@dataclass(frozen=True)
class Fault:
    """Refuse an operation that touches `within`.

    on: "peer" (an UpsertPeer with an allowed IP or endpoint inside `within`), "route"
    (an AddRoute to a destination inside it) or "address" (an AddAddress inside it).
    error: "rejected" (OperationRejected with the errno's words), "conflict"
    (RouteConflict) or "device" (a device-level KernelError).
    """

    on: str
    within: IPNetwork
    error: str = "rejected"
    code: int = errno.EINVAL

    def matches(self, op: Operation) -> bool:
        if self.on == "peer" and isinstance(op, UpsertPeer):
            nets = op.allowed_ips or ()
            hosts = [op.endpoint.host] if op.endpoint is not None else []
            return any(_inside(n, self.within) for n in nets) or any(
                h.version == self.within.version and h in self.within for h in hosts
            )
        if self.on == "route" and isinstance(op, AddRoute):
            return _inside(op.destination, self.within)
        if self.on == "address" and isinstance(op, AddAddress):
            return _inside(op.address.network, self.within)
        return False

    def exception(self, op: Operation) -> KernelError:
        answer = f"{os.strerror(self.code)} (errno {self.code}, injected)"
        if self.error == "conflict":
            return RouteConflict(f"route {op} belongs to someone else (injected)", answer=answer)
        if self.error == "device":
            return KernelError(f"the device failed (injected): {answer}")
        return OperationRejected(f"refused {op} (injected): {answer}", answer=answer)

    def to_json(self) -> dict[str, object]:
        return {"on": self.on, "within": str(self.within), "error": self.error, "code": self.code}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Fault:
        return cls(
            on=str(data["on"]),
            within=ipaddress.ip_network(str(data["within"])),
            error=str(data.get("error", "rejected")),
            code=int(str(data.get("code", errno.EINVAL))),
        )


def _inside(net: IPNetwork, within: IPNetwork) -> bool:
    return net.version == within.version and net.subnet_of(within)  # type: ignore[arg-type]


def faults_to_env(faults: Sequence[Fault]) -> str:
    return json.dumps([f.to_json() for f in faults])


def faults_from_env() -> list[Fault]:
    return [Fault.from_json(item) for item in json.loads(os.environ.get(FAULTS_ENV) or "[]")]


class FaultyKernel:
    """The Kernel port over `inner`; an operation a fault matches is refused after the
    operations before it have landed, as a real kernel leaves a batch it stops in."""

    def __init__(self, inner: Kernel, faults: Sequence[Fault]) -> None:
        self.inner = inner
        self.faults = list(faults)
        self.name = inner.name
        self.refusals = 0

    @property
    def writes(self) -> int:
        return self.inner.writes

    @writes.setter
    def writes(self, value: int) -> None:
        self.inner.writes = value

    async def observe(self, ifname: str, *, device_only: bool = False) -> ObservedState:
        return await self.inner.observe(ifname, device_only=device_only)

    async def peers(self, ifname: str) -> Mapping[PublicKey, ObservedPeer] | None:
        return await self.inner.peers(ifname)

    async def apply(self, ifname: str, ops: Sequence[Operation]) -> None:
        for i, op in enumerate(ops):
            fault = next((f for f in self.faults if f.matches(op)), None)
            if fault is not None:
                if i:
                    await self.inner.apply(ifname, ops[:i])
                self.refusals += 1
                raise fault.exception(op)
        await self.inner.apply(ifname, ops)

    async def move_route(
        self, ifname: str, destination: IPNetwork, *, among: Sequence[str]
    ) -> None:
        await self.inner.move_route(ifname, destination, among=among)

    async def delete(self, ifname: str) -> None:
        await self.inner.delete(ifname)

    async def close(self) -> None:
        await self.inner.close()
