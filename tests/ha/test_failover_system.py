"""Two hubs, two spokes: real `wg-kube` processes in network namespaces against the API
emulator (the scenario of bench/failover.py, asserted here), over wireguard-go on the
host (marker `userspace`) and kernel WireGuard inside the test VM (marker `kernel`).

Each fault on the active hub — its underlay link down, its WireGuard UDP dropped by
nftables, its IP forwarding off — moves both spokes to the other hub once, within the
issue's bound on the outage, and back once after the hold-down without loss; killing the
active hub's operator loses nothing and moves nothing. The kernel variant, in the slow
emulated VM, injects the link-down and forwarding-off faults only (the issue's minimum).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import failover
from tests.system.test_hub_and_spokes import skip_unless
from wgkube.kernel import Backend
from wgkube.testing.lab import SLOW

HOLD_DOWN = 3.0
KERNEL_FAULTS = ("underlay link down", "IP forwarding off")


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("kernel", marks=pytest.mark.kernel, id="kernel"),
        pytest.param("userspace", marks=pytest.mark.userspace, id="userspace"),
    ],
)
@pytest.mark.slow
async def test_each_fault_on_the_active_hub_moves_both_spokes_once_and_back_after_the_hold_down(
    tmp_path: Path, backend: Backend
) -> None:
    await skip_unless(backend)
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    faults = [f for f in failover.FAULTS if backend == "userspace" or f.name in KERNEL_FAULTS]
    assert len(faults) == (len(failover.FAULTS) if backend == "userspace" else 2)  # names
    # Timings in the emulated VM are not the host's (KERNEL-TESTS.md): there the bound
    # is that traffic recovered while the fault still lasted, not the target.
    worst = failover.TARGET_WORST_S if SLOW == 1 else failover.FAULT_S
    ha = await failover.start(tmp_path / "lab", hold_down=HOLD_DOWN, backend=backend)
    try:
        assert await ha.lab.backend_name(ha.hubs[0]) == backend
        # Joined: both spokes peer with both hubs and send through the preferred one.
        for spoke in ha.spokes:
            assert await ha.on_hub(spoke) == "hub-a"
        for fault in faults:
            record = await failover.one_fault(ha, fault, hold_down=HOLD_DOWN)
            assert record["hubs_during_fault"] == ["hub-b", "hub-b"], record
            assert record["route_changes_per_spoke"] == [1, 1], record
            assert record["route_changes_with_failback"] == [2, 2], record
            assert record["failback_lost"] == [0, 0], record
            assert min(record["lost"]) > 0, f"{fault.name} did not cut the traffic: {record}"
            assert record["worst_s"] <= worst, record

        killed = await failover.kill_operator(ha)
        assert killed["lost"] == [0, 0], killed
        assert killed["route_changes_per_spoke"] == [0, 0], killed
        assert killed["hubs_after"] == ["hub-a", "hub-a"], killed
    finally:
        await ha.lab.close_kernels()
        ha.lab.clean()


@pytest.mark.userspace
@pytest.mark.slow
async def test_a_one_way_loss_from_the_active_hub_to_one_spoke_is_relayed_through_the_other_hub(
    tmp_path: Path,
) -> None:
    await skip_unless("userspace")
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    ha = await failover.start(tmp_path / "lab", hold_down=HOLD_DOWN)
    try:
        record = await failover.one_fault(ha, failover.ONE_WAY, hold_down=HOLD_DOWN)
        # spoke-1 cannot hear hub-a and moves; spoke-2 still sends through hub-a, which
        # delivers to spoke-1 through its relay interface towards hub-b.
        assert record["hubs_during_fault"] == ["hub-b", "hub-a"], record
        assert record["hub_route_devices_during_fault"] == ["wg-hub-a-r1", "wg-hub-a"], record
        assert record["route_changes_per_spoke"] == [1, 0], record
        assert record["hub_relay_changes"] == [1, 0], record
        # Cleared: hub-a delivers directly again, spoke-1 comes back, each once, no loss.
        assert record["route_changes_with_failback"] == [2, 0], record
        assert record["hub_relay_changes_with_failback"] == [2, 0], record
        assert record["failback_lost"] == [0, 0], record
        assert min(record["lost"]) > 0, f"the fault did not cut the traffic: {record}"
        assert record["worst_s"] <= failover.TARGET_WORST_S, record
    finally:
        await ha.lab.close_kernels()
        ha.lab.clean()
