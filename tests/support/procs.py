"""Real wg-kube processes for tests: start, read their logs, wait on outcomes, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wgkube.testing.apiserver import wait_for


class Process:
    """A `wg-kube` subprocess whose combined output goes to a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        log_path: Path,
        netns: str | None = None,
        module: str = "wgkube",
    ) -> None:
        self.log_path = log_path
        log = log_path.open("ab")
        cmd = [sys.executable, "-m", module, *argv]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child holds its own descriptor

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, *, timeout: float = 20.0) -> None:
        wait_for(lambda: text in self.log or self._dead(), timeout=timeout, message=f"log {text!r}")
        assert text in self.log, (
            f"process exited ({self.proc.returncode}) before {text!r}:\n{self.log}"
        )

    def _dead(self) -> bool:
        return self.proc.poll() is not None

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def exit_code(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBE", "WG_", "NODE_NAME", "ANNOTATION_PREFIX", "HUB_"))
    }
    env["PYTHONWARNINGS"] = "error::DeprecationWarning:wgkube"
    env.update(extra)
    return env


class MemoryDevice:
    """Reads the JSON file of a memory-backend kernel (see wgkube.kernel.memory)."""

    def __init__(self, path: Path, ifname: str = "wg0") -> None:
        self.path = path
        self.ifname = ifname

    def state(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    @property
    def writes(self) -> int:
        return int(self.state().get("writes", 0))

    def device(self) -> dict[str, Any] | None:
        dev: dict[str, Any] | None = self.state().get("devices", {}).get(self.ifname)
        return dev

    def peers(self) -> dict[str, dict[str, Any]]:
        dev = self.device()
        return dict(dev["peers"]) if dev else {}

    def routes(self) -> set[str]:
        dev = self.device()
        return set(dev["routes"]) if dev else set()

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Change the device by hand (drift), as someone running `wg set` would."""
        data = self.state()
        change(data["devices"][self.ifname])
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)
