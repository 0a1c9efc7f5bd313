"""Two CPU replicas with the round-robin router: requests for one adapter alternate (the baseline to affinity)."""
from __future__ import annotations

import pytest

pytest.importorskip("ray.serve", reason='the fleet needs Ray Serve: pip install -e ".[fleet]"')

from tests.test_fleet_e2e import replica_of, two_replicas  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from two_replicas(tmp_path_factory.mktemp("adapters"), "round_robin")


def test_round_robin_alternates_replicas_whatever_the_adapter(fleet):
    seen = [replica_of(fleet, "adapter-0000") for _ in range(8)]
    assert len(set(seen)) == 2
    assert all(a != b for a, b in zip(seen, seen[1:])), seen
