"""Bad set-up of `wg-kube hub` and `wg-kube spoke`: one line naming the input and the fix,
exit status 1, no traceback — for every start-up input, against real processes.

Kubeconfig and key cases run on the memory backend (as `nobody` where a permission is the
point); kernel cases run in a throw-away network namespace with the real backend.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.procs import MemoryDevice, base_env
from wgkube.testing.apiserver import EmulatedApiServer
from wgkube.testing.netns import NetNS, can_make_namespaces, create_netns

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
needs_root = pytest.mark.skipif(can_make_namespaces() is not None, reason="needs root and ip")


def kubeconfig_text(server: str, *, current: bool = True) -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
        + ("current-context: x\n" if current else "")
        + "users: [{name: u, user: {token: not-a-real-token}}]\n"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket is closed


@dataclass
class World:
    """One case's surroundings: a directory `nobody` may use, and what to undo."""

    root: Path
    netns: NetNS | None = None
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    interface: str = field(default_factory=lambda: f"wgkst{secrets.token_hex(2)}")
    address: str = "100.96.0.2/32"
    backend: str = "memory"
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def key_dir(self) -> Path:
        return self.root / "keys"

    def good_kubeconfig(self) -> None:
        self.kubeconfig.write_text(kubeconfig_text(f"http://127.0.0.1:{closed_port()}"))

    def as_nobody(self) -> None:
        self.prefix = NOBODY

    def in_netns(self) -> NetNS:
        self.netns = create_netns("wgkst")
        self.backend = "auto"
        return self.netns


def argv(command: str, world: World) -> tuple[list[str], dict[str, str]]:
    env = base_env(WGKUBE_MEMORY_STATE=str(world.root / "memory.json"), **world.env)
    python = [sys.executable, "-m", "wgkube", command]
    if command == "hub":
        args = [
            *python,
            "--node-name=hub",
            f"--kubeconfig={world.kubeconfig}",
            f"--key-dir={world.key_dir}",
            f"--interface={world.interface}",
            f"--address={world.address}",
            f"--backend={world.backend}",
            "--probe-address=",  # none: a failed start must not need a port
        ]
    else:
        args = python
        env.update(
            NODE_NAME="spoke",
            KUBECONFIG=str(world.kubeconfig),
            WG_PRIVATE_KEY_FILE=str(world.key_dir / "spoke.key"),
            WG_INTERFACE=world.interface,
            WG_ADDRESS=world.address,
            WG_BACKEND=world.backend,
        )
    if world.netns is not None:
        args = world.netns.argv(*args)
    return [*world.prefix, *args], env


# -- the arrangements ----------------------------------------------------------------------
def kubeconfig_missing(w: World) -> None:
    w.kubeconfig.unlink(missing_ok=True)


def kubeconfig_unreadable(w: World) -> None:
    w.good_kubeconfig()
    w.kubeconfig.chmod(0o600)  # root's; the command runs as nobody
    w.as_nobody()


def kubeconfig_malformed(w: World) -> None:
    w.kubeconfig.write_text("clusters: [\n")


def kubeconfig_empty_object(w: World) -> None:
    w.kubeconfig.write_text("{}\n")


def kubeconfig_without_current_context(w: World) -> None:
    w.kubeconfig.write_text(kubeconfig_text("http://127.0.0.1:1", current=False))


def kubeconfig_server_unreachable(w: World) -> None:
    w.good_kubeconfig()


def kubeconfig_server_with_a_bad_certificate(w: World) -> None:
    port = serve_untrusted_tls(w)
    w.kubeconfig.write_text(kubeconfig_text(f"https://127.0.0.1:{port}"))


def kubeconfig_with_refused_credentials(w: World) -> None:
    server = EmulatedApiServer()  # knows only its own admin token
    server.__enter__()
    w.cleanups.append(lambda: server.__exit__(None, None, None))
    w.kubeconfig.write_text(kubeconfig_text(server.url))


def key_dir_unwritable(w: World) -> None:
    w.good_kubeconfig()
    w.key_dir.mkdir(mode=0o755)  # root's: nobody may look, not write
    w.as_nobody()


def key_file_unreadable(w: World) -> None:
    w.good_kubeconfig()
    w.key_dir.mkdir(mode=0o755)
    for name in ("spoke.key", f"{w.interface}.key"):
        path = w.key_dir / name
        path.write_text("not read anyway\n")
        path.chmod(0o600)
    w.as_nobody()


def not_root(w: World) -> None:
    w.good_kubeconfig()
    w.backend = "auto"
    w.as_nobody()


def listen_port_in_use(w: World) -> None:
    w.good_kubeconfig()
    ns = w.in_netns()
    holder = subprocess.Popen(
        ns.argv(
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 51820)); print('bound', flush=True); time.sleep(120)",
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "bound"

    def stop() -> None:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()

    w.cleanups.append(stop)


def interface_taken_by_another_link(w: World) -> None:
    w.good_kubeconfig()
    ns = w.in_netns()
    ns.ip("link", "add", w.interface, "type", "bridge")


def wireguard_go_missing(w: World) -> None:
    w.good_kubeconfig()
    w.in_netns()
    w.backend = "userspace"
    w.env["WG_USERSPACE_IMPLEMENTATION"] = str(w.root / "no-such-wireguard-go")


def ipv6_disabled_and_asked_for(w: World) -> None:
    w.good_kubeconfig()
    ns = w.in_netns()
    ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    w.address = "100.96.0.2/32,fd00:96::2/128"


def serve_untrusted_tls(w: World) -> int:
    """A TLS server whose self-signed certificate no CA vouches for."""
    cert, key = w.root / "cert.pem", w.root / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                # The client refuses the certificate (the point): the handshake fails.
                with contextlib.suppress(ssl.SSLError, OSError):
                    context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join()
        listener.close()

    w.cleanups.append(close)
    port: int = listener.getsockname()[1]
    return port


@dataclass(frozen=True)
class Case:
    arrange: Callable[[World], None]
    expect: str
    """A fragment of the one line: what failed."""
    names: str
    """The input the line names, for the user to fix ("" when the fix is not a flag)."""
    kernel: bool = False
    """Needs a network namespace of its own (the whole file runs under the lab lock)."""


KUBECONFIG = "--kubeconfig / KUBECONFIG"
CASES = {
    "kubeconfig missing": Case(kubeconfig_missing, "does not exist", KUBECONFIG),
    "kubeconfig unreadable": Case(kubeconfig_unreadable, "cannot be read", KUBECONFIG),
    "kubeconfig malformed": Case(kubeconfig_malformed, "is not valid YAML", KUBECONFIG),
    "kubeconfig is {}": Case(kubeconfig_empty_object, "has no current-context", KUBECONFIG),
    "kubeconfig without a current context": Case(
        kubeconfig_without_current_context, "kubectl config use-context", KUBECONFIG
    ),
    "kubeconfig with an unreachable server": Case(
        kubeconfig_server_unreachable, "which cannot be reached", KUBECONFIG
    ),
    "kubeconfig with a bad certificate": Case(
        kubeconfig_server_with_a_bad_certificate, "does not trust the API server", KUBECONFIG
    ),
    "kubeconfig with refused credentials": Case(
        kubeconfig_with_refused_credentials, "is refused by the API server", KUBECONFIG
    ),
    "key dir unwritable": Case(
        key_dir_unwritable, "cannot create private key file", "--private-key-file"
    ),
    "key file unreadable": Case(key_file_unreadable, "cannot be read", "--private-key-file"),
    "not root": Case(not_root, "lacks CAP_NET_ADMIN", ""),
    "UDP listen port in use": Case(
        listen_port_in_use, "UDP port 51820 is already in use", "--listen-port", kernel=True
    ),
    "interface name taken by a non-WireGuard link": Case(
        interface_taken_by_another_link, "exists and is", "--interface", kernel=True
    ),
    "wireguard-go missing": Case(
        wireguard_go_missing, "no-such-wireguard-go is not installed", "--backend", kernel=True
    ),
    "IPv6 disabled while an IPv6 address is asked for": Case(
        ipv6_disabled_and_asked_for, "IPv6 is disabled here", "--address", kernel=True
    ),
}


@pytest.fixture
def world() -> Iterator[World]:
    # Not under tmp_path: its parents are root's 0700, and some cases run as nobody.
    root = Path(tempfile.mkdtemp(prefix="wgkube-startup-"))
    root.chmod(0o777)
    w = World(root)
    try:
        yield w
    finally:
        for undo in reversed(w.cleanups):
            undo()
        if w.netns is not None:
            for pid in _pids(w.netns):  # wireguard-go keeps the namespace alive
                os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", w.netns.name], check=False)
            Path(f"/var/run/wireguard/{w.interface}.sock").unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def _pids(ns: NetNS) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@needs_root
@pytest.mark.parametrize("command", ["hub", "spoke"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_bad_start_up_input_ends_in_one_line_naming_it_and_the_fix(
    case: str, command: str, world: World
) -> None:
    spec = CASES[case]
    spec.arrange(world)
    args, env = argv(command, world)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"wg-kube {command}: "), output
    assert spec.expect in line, output
    assert spec.names in line, output
    if command == "spoke" and case.startswith("kubeconfig"):
        # The interface comes first (a kubelet binds to its address); a bad kubeconfig
        # found afterwards leaves it up.
        device = MemoryDevice(world.root / "memory.json", world.interface).device()
        assert device is not None, output
        assert device["addresses"] == ["100.96.0.2/32"], output


def test_spoke_down_removes_the_interface_even_when_the_kubeconfig_is_bad(world: World) -> None:
    kubeconfig_empty_object(world)
    args, env = argv("spoke", world)
    up = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 1, up.stderr
    device = MemoryDevice(world.root / "memory.json", world.interface)
    assert device.device() is not None, up.stderr
    down = subprocess.run([*args, "--down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "Traceback" not in down.stderr
    assert "cannot unregister node spoke: kubeconfig" in down.stderr
    assert device.device() is None, down.stderr
