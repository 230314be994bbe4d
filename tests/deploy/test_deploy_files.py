"""Manifests, image, systemd unit and cloud-init: valid, least privilege, and consistent."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.controlplane import require_control_plane
from wgkube.testing.controlplane import ControlPlane, kubectl_binary

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
KUBERNETES_VERSION = "1.37.0"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def daemonset() -> dict[str, Any]:
    return documents(ROOT / "manifests" / "20-daemonset.yaml")[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates_strictly_against_the_kubernetes_schema(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_namespace_sorts_first_and_the_kustomization_lists_every_file() -> None:
    # `kubectl apply -f manifests/` applies files in name order, one by one.
    names = [p.name for p in MANIFESTS]
    assert names == [
        "00-namespace.yaml",
        "10-rbac.yaml",
        "20-daemonset.yaml",
        "30-admission.yaml",
        "40-router.yaml",
    ]
    assert [d["kind"] for d in documents(MANIFESTS[0])] == ["Namespace"]
    kustomization = yaml.safe_load((ROOT / "manifests" / "Kustomization").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == names
    image = daemonset()["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] == kustomization["images"][0]["name"]


@pytest.mark.skipif(kubectl_binary() is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_same_objects() -> None:
    out = subprocess.run(
        [str(kubectl_binary()), "kustomize", str(ROOT / "manifests")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    listed = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in documents(p)}
    assert built == listed


def test_the_daemonset_runs_on_the_hub_with_only_net_admin_and_keeps_its_key() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["nodeSelector"] == {"wireguard.kube/hub": "true"}
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    key_dir = env["WG_KEY_DIR"]["value"]
    state = next(name for name, path in mounts.items() if path == key_dir)
    assert volumes[state]["hostPath"]["path"] == "/var/lib/wg-kube"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def test_the_probes_hit_the_operators_own_endpoints() -> None:
    (container,) = daemonset()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    host, port = env["WG_PROBE_ADDRESS"].rsplit(":", 1)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["host"], str(get["port"]), get["path"]) == (host, port, path)
    source = (ROOT / "wgkube" / "observe" / "probes.py").read_text()
    assert '"/healthz"' in source
    assert '"/readyz"' in source


def test_the_containerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = subprocess.run(
        [str(hadolint), str(ROOT / "Containerfile")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_entry_point_is_the_installed_console_script() -> None:
    text = (ROOT / "Containerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["wg-kube"]
    assert "wg-kube" in scripts
    installed = Path(sys.executable).with_name("wg-kube")
    proc = subprocess.run([str(installed), "version"], capture_output=True, text=True, check=True)
    assert (
        proc.stdout.strip()
        == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    )
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), item


UNIT = ROOT / "deploy" / "systemd" / "wg-kube-spoke.service"


def test_the_spoke_unit_is_hardened_and_ordered_before_the_kubelet() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for expected in [
        "Type=notify",
        "Restart=on-failure",
        "Before=kubelet.service",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "StateDirectory=wg-kube",
    ]:
        assert expected in lines, expected


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_spoke_unit(tmp_path: Path) -> None:
    unit = tmp_path / "wg-kube-spoke.service"
    wg_kube = Path(sys.executable).with_name("wg-kube")
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/wg-kube", str(wg_kube)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "wg-kube-spoke.service" in line and "kubelet.service" not in line
    ]
    assert not problems, problems


CLOUD_INIT = ROOT / "deploy" / "cloud-init" / "spoke.yaml"


def cloud_init_files() -> dict[str, str]:
    config = yaml.safe_load(CLOUD_INIT.read_text())
    return {f["path"]: f["content"] for f in config["write_files"]}


def test_cloud_init_installs_the_same_unit_and_sets_node_ip_where_kubeadm_reads_it() -> None:
    text = CLOUD_INIT.read_text()
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    files = cloud_init_files()
    assert files["/etc/systemd/system/wg-kube-spoke.service"] == UNIT.read_text()
    env = dict(
        line.split("=", 1) for line in files["/etc/default/wg-kube-spoke"].split() if "=" in line
    )
    address = env["WG_ADDRESS"].split("/")[0]
    dropin = files["/etc/systemd/system/kubelet.service.d/20-wg-kube.conf"]
    assert "After=wg-kube-spoke.service" in dropin
    # kubeadm's unit loads /etc/default/kubelet after drop-ins' Environment=: none here.
    assert "KUBELET_EXTRA_ARGS" not in dropin
    commands = [str(c) for c in config["runcmd"]]
    assert f"/usr/local/sbin/wg-kube-kubelet-node-ip {address}" in commands
    joined = " ".join(commands)
    assert joined.index("wg-kube-install") < joined.index("enable --now wg-kube-spoke")
    assert joined.index("enable --now wg-kube-spoke") < joined.index("restart kubelet")
    assert "pip install wg-kube" not in text  # no such package on an index: a named artifact
    assert files["/etc/modules-load.d/wireguard.conf"].strip() == "wireguard"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, 'KUBELET_EXTRA_ARGS="--node-ip=100.96.0.2"'),
        ("", 'KUBELET_EXTRA_ARGS="--node-ip=100.96.0.2"'),
        ("KUBELET_EXTRA_ARGS=", 'KUBELET_EXTRA_ARGS="--node-ip=100.96.0.2"'),
        ("KUBELET_EXTRA_ARGS=--node-ip=10.0.0.5", 'KUBELET_EXTRA_ARGS="--node-ip=100.96.0.2"'),
        (
            'KUBELET_EXTRA_ARGS="--v=2 --node-ip=10.0.0.5 --max-pods=50"',
            'KUBELET_EXTRA_ARGS="--v=2 --max-pods=50 --node-ip=100.96.0.2"',
        ),
        (
            'OTHER=1\nKUBELET_EXTRA_ARGS="--v=2"',
            'OTHER=1\nKUBELET_EXTRA_ARGS="--v=2 --node-ip=100.96.0.2"',
        ),
    ],
)
def test_node_ip_is_merged_into_etc_default_kubelet(
    tmp_path: Path, before: str | None, after: str
) -> None:
    script = tmp_path / "node-ip"
    script.write_text(cloud_init_files()["/usr/local/sbin/wg-kube-kubelet-node-ip"])
    defaults = tmp_path / "kubelet"
    if before is not None:
        defaults.write_text(before + "\n" if before else "")
    env = {"PATH": "/usr/bin:/bin", "KUBELET_DEFAULTS": str(defaults)}
    for _ in range(2):  # a second boot changes nothing
        subprocess.run(["sh", str(script), "100.96.0.2"], env=env, check=True)
        assert defaults.read_text() == after + "\n"


def run_install(tmp_path: Path, artifact: str, sha256: str) -> subprocess.CompletedProcess[str]:
    """The install script with `python3` replaced by a recorder (no index is needed)."""
    script = tmp_path / "install"
    script.write_text(cloud_init_files()["/usr/local/sbin/wg-kube-install"])
    settings = tmp_path / "install.env"
    settings.write_text(f"WG_KUBE_ARTIFACT={artifact}\nWG_KUBE_SHA256={sha256}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "python3"
    recorder.write_text(
        '#!/bin/sh\nmkdir -p "$3/bin"\n'
        'printf \'#!/bin/sh\\necho "$@" > %s/pip-args\\n\' "$(dirname "$0")" > "$3/bin/pip"\n'
        'chmod +x "$3/bin/pip"\n'
    )
    recorder.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "WG_KUBE_INSTALL_ENV": str(settings),
        "WG_KUBE_PREFIX": str(tmp_path / "venv"),
        "WG_KUBE_LINK": str(tmp_path / "wg-kube"),
    }
    return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)


def test_the_install_script_installs_the_named_wheel_only_when_its_checksum_matches(
    tmp_path: Path,
) -> None:
    wheel = tmp_path / "wg_kube-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")
    digest = hashlib.sha256(b"a wheel").hexdigest()
    wrong = run_install(tmp_path, str(wheel), "0" * 64)
    assert wrong.returncode == 1
    assert "SHA-256 mismatch" in wrong.stderr
    assert not (tmp_path / "venv").exists()
    right = run_install(tmp_path, str(wheel), digest)
    assert right.returncode == 0, right.stderr
    assert (tmp_path / "bin" / "pip-args").read_text().split() == [
        "install",
        "--upgrade",
        str(wheel),
    ]
    assert (tmp_path / "wg-kube").is_symlink()


def test_the_install_script_takes_a_git_ref_and_refuses_a_checksum_for_it(tmp_path: Path) -> None:
    ref = "git+https://example.invalid/wg-kube@0123abc"
    assert run_install(tmp_path, ref, "").returncode == 0
    assert (tmp_path / "bin" / "pip-args").read_text().split() == ["install", "--upgrade", ref]
    refused = run_install(tmp_path, ref, "0" * 64)
    assert refused.returncode == 1
    assert "pin a commit" in refused.stderr


def test_the_install_script_says_what_to_set_when_no_artifact_is_named(tmp_path: Path) -> None:
    result = run_install(tmp_path, "", "")
    assert result.returncode != 0
    assert "WG_KUBE_ARTIFACT" in result.stderr


@pytest.mark.parametrize("how", ["-f", "-k"])
def test_the_manifests_apply_in_one_command_on_a_fresh_real_apiserver(how: str) -> None:
    require_control_plane()
    with ControlPlane() as plane:
        applied = plane.kubectl("apply", how, str(ROOT / "manifests"))
        assert applied.returncode == 0, applied.stderr
        for made in (
            "namespace/wg-kube created",
            "serviceaccount/wg-kube created",
            "role.rbac.authorization.k8s.io/wg-kube-hub-readers created",
            "daemonset.apps/wg-kube created",
            "validatingadmissionpolicy.admissionregistration.k8s.io/wg-kube-hub-label created",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/wg-kube-hub-label",
        ):
            assert made in applied.stdout, applied.stdout
        again = plane.kubectl("apply", how, str(ROOT / "manifests"))
        assert again.returncode == 0, again.stderr
