"""wgkube.kube.lean: the processes import a few of kubernetes-asyncio's modules, and code
that asks for the rest still gets it. Each case runs in a fresh interpreter (a deferral
is process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


COUNT = """
import sys
print(sum(name.startswith("kubernetes_asyncio") for name in sys.modules))
print("kubernetes_asyncio.client.models.v1_node" in sys.modules)
"""


@pytest.mark.parametrize(
    "entry", ["wgkube.operator.main", "wgkube.spoke_agent.main", "wgkube.router.main"]
)
def test_an_entry_point_imports_few_of_kubernetes_asyncio(entry: str) -> None:
    count, node_model = run(f"import {entry}\n{COUNT}").split()
    # A full import is ~860 modules; the deferred one ~20.
    assert int(count) < 40, count
    assert node_model == "False"


def test_what_is_asked_for_later_is_the_real_package() -> None:
    out = run(
        """
        import wgkube.operator.main
        from kubernetes_asyncio import client, watch
        from kubernetes_asyncio.client.api import core_v1_api
        from wgkube.kube import lean
        assert lean.deferred("kubernetes_asyncio.client")
        assert client.CoreV1Api is core_v1_api.CoreV1Api
        node = client.V1Node(metadata=client.V1ObjectMeta(name="a"))  # completes the package
        assert not lean.deferred("kubernetes_asyncio.client")
        assert node.metadata.name == "a"
        assert client.CoreV1Api is core_v1_api.CoreV1Api  # one class, not a second copy
        import kubernetes_asyncio.client.models as models
        assert models.V1Pod is client.V1Pod
        assert watch.Watch is not None
        print(len(client.__all__) if hasattr(client, "__all__") else len(dir(client)))
        """
    )
    assert int(out) > 800  # every generated name is there


def test_an_already_imported_package_is_left_alone() -> None:
    out = run(
        """
        from kubernetes_asyncio import client
        from wgkube.kube import lean
        lean.install()
        assert not lean.deferred("kubernetes_asyncio.client")
        print(client.V1Node.__name__)
        """
    )
    assert out.strip() == "V1Node"


def test_the_api_client_works_deferred() -> None:
    """What wg-kube calls: configuration, ApiClient, CoreV1Api (URL and headers built,
    no model imported); the kubeconfig loader is imported as well."""
    out = run(
        """
        import asyncio, sys
        from wgkube.kube.client import Api, Configuration
        from kubernetes_asyncio import config
        async def main():
            configuration = Configuration(host="http://127.0.0.1:9")
            async with Api.from_configuration(configuration) as api:
                try:
                    await api.get_node("a")
                except Exception as exc:
                    print(type(exc).__name__)
        asyncio.run(main())
        print("kubernetes_asyncio.client.models.v1_node" in sys.modules)
        """
    )
    assert out.split() == ["KubeApiError", "False"]
