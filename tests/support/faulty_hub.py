"""`python -m tests.support.faulty_hub hub ...`: the real `wg-kube hub`, whose kernel adapter
is wrapped in a FaultyKernel armed from $WGKUBE_TEST_FAULTS.

For system tests only: it injects the kernel answers (an errno, a foreign route) that no
real annotation value produces, into a hub that is otherwise exactly `wg-kube hub`.
"""

from __future__ import annotations

import sys
from typing import Any

import wgkube.operator.hub as hub_module
from tests.support.faults import FaultyKernel, faults_from_env
from wgkube.cli import main
from wgkube.kernel import Kernel, open_kernel


async def _open_faulty_kernel(*args: Any, **kwargs: Any) -> Kernel:
    return FaultyKernel(await open_kernel(*args, **kwargs), faults_from_env())


if __name__ == "__main__":
    # The one seam: Hub.start opens its kernel through this module-level name.
    hub_module.__dict__["open_kernel"] = _open_faulty_kernel
    sys.exit(main())
