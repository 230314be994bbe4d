"""An authoritative list taken page by page (PeerRegistry.listing) is the same as one
taken whole (replace_all), and a list that fails half-way removes nothing."""

from __future__ import annotations

import random

from tests.unit.builders import KEYS
from tests.unit.test_scale_counts import allowed, peer_node
from wgkube.operator.registry import PeerRegistry


def fresh(names: range, version: int) -> PeerRegistry:
    registry = PeerRegistry(KEYS, "hub")
    for i in names:
        registry.observe(peer_node(i, allowed(i), version))
    registry.take_changes()
    return registry


def state(registry: PeerRegistry) -> list[tuple[str, str]]:
    return sorted((r.node, str(r.allowed_ips)) for r in registry.records())


def test_a_list_page_by_page_ends_as_the_same_list_taken_whole() -> None:
    rng = random.Random(7)
    for _ in range(50):
        before = range(rng.randrange(0, 30))
        listed = [
            peer_node(i, allowed(i, base=rng.choice((10, 11))), rng.randrange(1, 40))
            for i in sorted(rng.sample(range(40), rng.randrange(0, 40)))
        ]
        whole, paged = fresh(before, 5), fresh(before, 5)
        # A Node created while the list was in flight: newer than the list, kept by both.
        for registry in (whole, paged):
            registry.observe(peer_node(99, allowed(99), 50))
        changed_whole = whole.replace_all(listed, "45")
        listing = paged.listing()
        for start in range(0, len(listed), 7):
            for node in listed[start : start + 7]:
                listing.add(node)
        assert listing.finish("45") == changed_whole
        assert state(paged) == state(whole)
        assert "n99" in {r.node for r in paged.records()}
        assert paged.take_changes() == whole.take_changes()


def test_a_list_that_fails_half_way_adds_what_it_read_and_removes_nothing() -> None:
    registry = fresh(range(10), 5)
    listing = registry.listing()
    listing.add(peer_node(3, allowed(3, base=11), 8))  # the first page, then the API fails
    assert len(registry) == 10, "no Node is taken as gone without a complete list"
    by_node = {r.node: {str(n) for n in r.allowed_ips} for r in registry.records()}
    assert by_node["n3"] == {allowed(3, base=11)}, "what the page held is taken"
    assert registry.take_changes().keys() == {"n3"}
