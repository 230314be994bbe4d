"""The hub and the spoke run with the cyclic collector tuned (wgkube.startup.tune_gc).

Run in a child process: freezing and re-tuning the collector of the test process would
change when every later test's garbage is collected.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_command_body_runs_with_the_imports_frozen_and_the_thresholds_raised() -> None:
    script = textwrap.dedent(
        """
        import gc
        import pydantic
        from wgkube.startup import GC_THRESHOLDS, run_checked

        assert gc.get_freeze_count() == 0 and gc.get_threshold() != GC_THRESHOLDS

        def body() -> int:
            print(gc.get_freeze_count(), gc.get_threshold() == GC_THRESHOLDS)
            return 0

        raise SystemExit(run_checked("wg-kube test", pydantic.BaseModel, body))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    frozen, tuned = done.stdout.split()
    # The imports (pydantic, wgkube) are thousands of objects, all frozen.
    assert int(frozen) > 10_000
    assert tuned == "True"
