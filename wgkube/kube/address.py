"""Where the API server is: the host of the kube configuration, resolved to addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from wgkube.domain.net import IPAddress

log = logging.getLogger("wgkube.kube")


async def api_server_addresses(url: str) -> tuple[IPAddress, ...]:
    """The addresses behind the configuration's host (`https://10.0.0.1:6443`, or a name).

    In a Pod the host is the `kubernetes` Service's ClusterIP: that address is what this
    process dials, so it is what must stay outside the tunnel. A name that does not
    resolve yields nothing (logged): the check cannot guard what it cannot name.
    """
    host = urlsplit(url if "//" in url else f"//{url}").hostname
    if not host:
        return ()
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning(
            "cannot resolve the API server %s (%s): it is not guarded from routes", host, exc
        )
        return ()
    found = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return tuple(sorted(found, key=lambda a: (a.version, int(a))))
