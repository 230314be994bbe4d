"""The one exception tree of wg-kube; adapters translate library errors into it.

WgKubeError
├── InvalidInput (also ValueError)      bad data from a user, a file or an annotation
│   ├── InvalidKey                      not 32 bytes of base64
│   ├── InvalidEndpoint                 not ip, ip:port or [v6]:port
│   ├── InvalidCIDR                     not a network, or host bits set
│   ├── AnnotationError                 one of the above, located on a Node and key
│   └── AnnouncementError               the hub announcement (ConfigMap) is unusable
├── KeyFileError                        a key file that exists but cannot be used
├── SetupError                          a start-up input (a file, a flag) cannot be used
│   └── KubeconfigError                 the kubeconfig is missing, unreadable or unusable
├── KernelError                         the kernel (or wireguard-go) refused or failed
│   ├── DeviceNotFound                  the interface does not exist
│   ├── BackendUnavailable              the chosen backend cannot run on this host
│   ├── NotPermitted                    no CAP_NET_ADMIN (not root)
│   ├── PortInUse                       the UDP listen port belongs to another socket
│   ├── InterfaceTaken                  the interface name belongs to a non-WireGuard link
│   ├── IPv6Disabled                    an IPv6 address is asked for, IPv6 is off here
│   └── OperationRejected               the kernel refused one operation; the device is fine
│       └── RouteConflict               a route to that destination belongs to someone else
└── ApiError                            the Kubernetes API failed in a way we report
"""

from __future__ import annotations


class WgKubeError(Exception):
    """Root of every error wg-kube raises on purpose."""


class InvalidInput(WgKubeError, ValueError):
    """Data from outside (a flag, a file, an annotation) is malformed."""


class InvalidKey(InvalidInput):
    """A WireGuard key is not 32 bytes of standard base64."""


class InvalidEndpoint(InvalidInput):
    """An endpoint is not `ip`, `ip:port` or `[ipv6]:port`."""


class InvalidCIDR(InvalidInput):
    """An address list holds something that is not a clean network."""


class AnnotationError(InvalidInput):
    """A Node carries an annotation or label wg-kube cannot use.

    The message names the Node, the key and the fault, so it can go verbatim
    into a log line and a Kubernetes Event.
    """

    def __init__(self, node: str, key: str, reason: str) -> None:
        self.node = node
        self.key = key
        self.reason = reason
        super().__init__(f"node {node!r}: annotation {key!r}: {reason}")


class AnnouncementError(InvalidInput):
    """The hub announcement cannot be used (malformed, unknown version, or a pinned key
    that does not match); the message says which, for a log line."""


class KeyFileError(WgKubeError):
    """A private key file exists but is unreadable or malformed; never silently replaced."""


class SetupError(WgKubeError):
    """A start-up input cannot be used; the message names the input and what is wrong."""


class KubeconfigError(SetupError):
    """The kubeconfig file is missing, unreadable, malformed or lacks what is needed."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"kubeconfig {path} {problem}")


class KernelError(WgKubeError):
    """The kernel or the userspace implementation refused an operation."""


class DeviceNotFound(KernelError):
    """The WireGuard interface does not exist."""


class BackendUnavailable(KernelError):
    """The requested WireGuard backend cannot run on this host."""


class NotPermitted(KernelError):
    """The process lacks CAP_NET_ADMIN, so it may not create or configure interfaces."""


class PortInUse(KernelError):
    """The WireGuard UDP listen port is bound by another socket (another interface or
    program)."""

    def __init__(self, port: int) -> None:
        self.port = port
        super().__init__(f"UDP port {port} is already in use")


class InterfaceTaken(KernelError):
    """A link with the interface's name exists and is not a WireGuard device wg-kube can
    adopt; it is never deleted or reused."""


class IPv6Disabled(KernelError):
    """An IPv6 address is asked for but IPv6 is disabled on this host (or namespace)."""


class OperationRejected(KernelError):
    """The kernel (or wireguard-go) refused one operation for what it carries, not because
    the device is broken: the caller may skip that operation and apply the others.

    `answer` is the kernel's own words (e.g. "Invalid argument (errno 22)").
    """

    def __init__(self, message: str, *, answer: str = "") -> None:
        self.answer = answer
        super().__init__(message)


class RouteConflict(OperationRejected):
    """A route to the destination exists and is not wg-kube's (another protocol, table
    owner or device): it is never replaced or deleted."""


class ApiError(WgKubeError):
    """The Kubernetes API failed in a way the caller must report."""
