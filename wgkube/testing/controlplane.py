"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests.

The binaries are built from upstream Go modules by `make controlplane`
(tools/controlplane/build.sh) into `.cache/controlplane/bin/`. `ControlPlane`
starts etcd and kube-apiserver with a throwaway data directory, certificates
generated with the `openssl` CLI, static-token authentication,
`--authorization-mode=Node,RBAC` and the NodeRestriction admission plugin, and
writes one kubeconfig per identity:

    with ControlPlane(nodes=["node-a"]) as cp:
        cp.url                                 # https://127.0.0.1:<port>
        cp.kubeconfig                          # admin (system:masters)
        cp.kubeconfig_for("system:node:node-a")  # static token, group system:nodes
        cp.kubeconfig_for("system:node:other")   # minted client certificate

Identities named at construction (admin, the hub operator, `nodes`) get
static tokens; any other user gets a client certificate signed by the
cluster CA on demand, with groups inferred from the Kubernetes naming
conventions (`system:node:*` -> `system:nodes`, service accounts ->
`system:serviceaccounts[:<ns>]`) unless given.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

BINARIES = ("etcd", "kube-apiserver", "kubectl")
ADMIN_USER = "wg-kube-admin"
HUB_USER = "system:serviceaccount:wg-kube:wg-kube"
SERVICE_CIDR = "10.96.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def default_bin_dir() -> Path:
    """$WGKUBE_CONTROLPLANE_BIN, else `<repo>/.cache/controlplane/bin`."""
    env = os.environ.get("WGKUBE_CONTROLPLANE_BIN")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "controlplane" / "bin"


def kubectl_binary() -> str | None:
    """The kubectl built by `make controlplane` (a current release), else one on PATH."""
    built = default_bin_dir() / "kubectl"
    return str(built) if built.exists() else shutil.which("kubectl")


def missing_binaries(bin_dir: Path | None = None) -> str | None:
    """Why a control plane cannot start here (a skip reason), or None if it can."""
    bin_dir = bin_dir or default_bin_dir()
    missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        return (
            f"control plane binaries not built ({', '.join(missing)} missing in {bin_dir}):"
            " run `make controlplane`"
        )
    if shutil.which("openssl") is None:
        return "the openssl CLI is needed to generate control plane certificates"
    return None


class ControlPlaneError(RuntimeError):
    """etcd or kube-apiserver failed to start; the message carries the log tail."""


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()


def default_groups(user: str) -> tuple[str, ...]:
    """The groups a real cluster's authenticators would give this user name."""
    if user.startswith("system:node:"):
        return ("system:nodes",)
    if user.startswith("system:serviceaccount:"):
        namespace = user.split(":")[2]
        return ("system:serviceaccounts", f"system:serviceaccounts:{namespace}")
    if user == ADMIN_USER:
        return ("system:masters",)
    return ()


def node_user(name: str) -> str:
    return f"system:node:{name}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """Terminate in order (apiserver before etcd), escalating to SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    procs.clear()


@dataclass
class _Pki:
    dir: Path
    serial: int = 1

    def ca(self) -> None:
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "7",
            "-subj",
            "/CN=wg-kube-test-ca",
            cwd=self.dir,
        )

    def leaf(self, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
        """A P-256 key and a CA-signed certificate: <name>.key, <name>.crt."""
        (self.dir / f"{name}.ext").write_text(extensions)
        _openssl(
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=self.dir,
        )
        self.serial += 1
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            str(self.serial),
            "-days",
            "7",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
            cwd=self.dir,
        )
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _subject(identity: Identity) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("/", "\\/").replace("=", "\\=")

    parts = [f"/O={esc(g)}" for g in identity.groups]
    return "".join(parts) + f"/CN={esc(identity.user)}"


@dataclass
class ControlPlane:
    """etcd + kube-apiserver on loopback ports; `start()`/`stop()` or a `with` block.

    `nodes`: node names that get static tokens as `system:node:<name>`.
    `extra_users`: more static-token identities (user -> groups).
    `workdir`: where data, certificates, kubeconfigs and logs go (default: a
    temporary directory removed by `stop()`; a given directory is kept).
    """

    nodes: Sequence[str] = ()
    extra_users: dict[str, Sequence[str]] = field(default_factory=dict)
    bin_dir: Path = field(default_factory=default_bin_dir)
    workdir: Path | None = None
    start_timeout: float = 60.0
    apiserver_args: Sequence[str] = ()
    host: str = "127.0.0.1"
    """The address kube-apiserver binds and serves on (and its certificate names): another
    local address lets processes in network namespaces reach it (tests/trust)."""

    url: str = field(init=False, default="")
    #: seconds spent in each start-up phase (certs, etcd, apiserver, total)
    startup_seconds: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir: Path | None = None
        self._owns_dir = False
        self._tokens: dict[Identity, str] = {}
        self._kubeconfigs: dict[Identity, Path] = {}
        self._pki: _Pki | None = None
        self._finalizer: weakref.finalize[..., ControlPlane] | None = None

    # -- public interface -------------------------------------------------

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise ControlPlaneError("control plane not started")
        return self._dir

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user `wg-kube-admin`, group `system:masters`)."""
        return self.kubeconfig_for(ADMIN_USER)

    @property
    def hub_kubeconfig(self) -> Path:
        """The hub operator's identity (`system:serviceaccount:wg-kube:wg-kube`)."""
        return self.kubeconfig_for(HUB_USER)

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def kubeconfig_for_node(self, name: str) -> Path:
        return self.kubeconfig_for(node_user(name))

    def kubeconfig_for(self, user: str, groups: Iterable[str] | None = None) -> Path:
        """A kubeconfig authenticating as `user` (static token if declared, else a cert)."""
        identity = Identity(user, tuple(groups) if groups is not None else default_groups(user))
        path = self._kubeconfigs.get(identity)
        if path is not None:
            return path
        credentials: dict[str, str]
        token = self._tokens.get(identity)
        if token is not None:
            credentials = {"token": token}
        else:
            if self._pki is None:
                raise ControlPlaneError("control plane not started")
            name = f"user-{len(self._kubeconfigs)}"
            crt, key = self._pki.leaf(name, _subject(identity), "extendedKeyUsage=clientAuth\n")
            credentials = {"client-certificate": str(crt), "client-key": str(key)}
        path = self.dir / "kubeconfigs" / f"{len(self._kubeconfigs)}-{_safe(user)}.kubeconfig"
        path.write_text(json.dumps(self._kubeconfig(user, credentials), indent=2))
        path.chmod(0o600)
        self._kubeconfigs[identity] = path
        return path

    def kubectl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this server (as admin unless `user`)."""
        kubeconfig = self.kubeconfig if user is None else self.kubeconfig_for(user)
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        reason = missing_binaries(self.bin_dir)
        if reason is not None:
            raise ControlPlaneError(reason)
        if self._procs:
            raise ControlPlaneError("control plane already started")
        t0 = time.monotonic()
        if self.workdir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="wgkube-controlplane-"))
            self._owns_dir = True
        else:
            self._dir = self.workdir
            self._dir.mkdir(parents=True, exist_ok=True)
        self._finalizer = weakref.finalize(
            self, _cleanup, self._procs, self._dir if self._owns_dir else None
        )
        try:
            for sub in ("pki", "etcd", "logs", "kubeconfigs"):
                (self.dir / sub).mkdir(exist_ok=True)
            (self.dir / "etcd").chmod(0o700)
            self._make_pki()
            t1 = time.monotonic()
            self.startup_seconds["certs"] = t1 - t0
            last: ControlPlaneError | None = None
            for _attempt in range(3):  # a free port can be taken between probe and bind
                try:
                    etcd_url = self._start_etcd()
                    t2 = time.monotonic()
                    self.startup_seconds["etcd"] = t2 - t1
                    self._start_apiserver(etcd_url)
                    self.startup_seconds["apiserver"] = time.monotonic() - t2
                    break
                except ControlPlaneError as exc:
                    last = exc
                    _stop(self._procs)
                    if "address already in use" not in str(exc):
                        raise
                    t1 = time.monotonic()
            else:
                assert last is not None
                raise last
            self.startup_seconds["total"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop kube-apiserver then etcd; remove the work directory if it was ours."""
        if self._finalizer is not None:
            self._finalizer()  # idempotent: runs _cleanup at most once
            self._finalizer = None
        self._procs = []
        self._kubeconfigs.clear()
        self._tokens.clear()
        self._pki = None
        self._dir = None
        self.url = ""

    # -- internals ------------------------------------------------------------

    def _make_pki(self) -> None:
        pki = _Pki(self.dir / "pki")
        pki.ca()
        pki.leaf(
            "apiserver",
            "/CN=kube-apiserver",
            f"subjectAltName=IP:{self.host},IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\n"
            "extendedKeyUsage=serverAuth\n",
        )
        # The service-account token signing key (ES256) and its public half.
        _openssl(
            "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=pki.dir
        )
        _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki.dir)
        self._pki = pki
        identities = [
            Identity(ADMIN_USER, ("system:masters",)),
            Identity(HUB_USER, default_groups(HUB_USER)),
        ]
        identities += [Identity(node_user(n), ("system:nodes",)) for n in self.nodes]
        identities += [Identity(u, tuple(g)) for u, g in self.extra_users.items()]
        lines = []
        for i, identity in enumerate(identities):
            token = secrets.token_hex(24)
            self._tokens[identity] = token
            groups = ",".join(identity.groups)
            lines.append(f'{token},{identity.user},uid-{i},"{groups}"')
        tokens = pki.dir / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        self._procs.insert(0, proc)  # stop in reverse start order
        return proc

    def _wait(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        ready: str,
        ctx: ssl.SSLContext | None,
        headers: dict[str, str],
    ) -> None:
        deadline = time.monotonic() + self.start_timeout
        error = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}:\n{_tail(self.log_dir / f'{name}.log')}"
                )
            request = urllib.request.Request(ready, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=2, context=ctx) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                error = str(exc)
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} not ready after {self.start_timeout}s ({error}):\n"
            f"{_tail(self.log_dir / f'{name}.log')}"
        )

    def _start_etcd(self) -> str:
        client, peer = _free_port(), _free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        data = self.dir / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(mode=0o700)
        proc = self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=wgkube-test",
                f"--data-dir={data}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=wgkube-test={peer_url}",
                "--unsafe-no-fsync",  # throwaway data: durability is not wanted
                "--log-level=warn",
            ],
        )
        self._wait("etcd", proc, f"{client_url}/health", None, {})
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        port = _free_port()
        pki = self.dir / "pki"
        proc = self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                # The lease reconciler refuses loopback advertise addresses and
                # nothing here needs the `kubernetes` Service's endpoints.
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cert-dir={pki}",
                "--profiling=false",
                "--v=1",
                *self.apiserver_args,
            ],
        )
        self.url = f"https://{self.host}:{port}"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        token = self._tokens[Identity(ADMIN_USER, ("system:masters",))]
        self._wait(
            "kube-apiserver", proc, f"{self.url}/readyz", ctx, {"Authorization": f"Bearer {token}"}
        )

    def _kubeconfig(self, user: str, credentials: dict[str, str]) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "wg-kube-test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "default", "context": {"cluster": "wg-kube-test", "user": user}}],
            "current-context": "default",
        }


def _safe(user: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user)


def _cleanup(procs: list[subprocess.Popen[bytes]], owned_dir: Path | None) -> None:
    _stop(procs)
    if owned_dir is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(owned_dir)
