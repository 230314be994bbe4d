"""The spoke's failover metrics: which hub is active, and how often traffic moved."""

from __future__ import annotations

from wgkube.desired.health import Thresholds
from wgkube.kernel.memory import MemoryKernel
from wgkube.observe.book import HealthBook
from wgkube.observe.metrics import Metrics
from wgkube.spoke_agent.main import active_hub_metrics


async def test_the_active_hub_gauge_follows_each_move_and_the_counter_counts_only_moves() -> None:
    metrics = Metrics(MemoryKernel(), "wg0", "spoke", HealthBook(Thresholds()), names=dict)
    update = active_hub_metrics(metrics)
    update("hub-a", False)  # the first choice is not a move
    update("hub-b", True)
    text = (await metrics.scrape()).decode()
    assert 'wgkube_active_hub{hub="hub-a"} 0.0' in text
    assert 'wgkube_active_hub{hub="hub-b"} 1.0' in text
    assert "wgkube_hub_failovers_total 1.0" in text
