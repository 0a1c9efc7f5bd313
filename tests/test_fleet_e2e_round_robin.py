"""Two CPU replicas with the round-robin router and an API key, engines inline in the replicas' processes:
requests for one adapter alternate (the baseline to affinity), and the key guards every forwarded request while
the replicas' own adapter loads pass it."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.serve", reason='the fleet needs Ray Serve: pip install -e ".[fleet]"')

from tests.test_fleet_e2e import post, replica_of, two_replicas  # noqa: E402

pytestmark = pytest.mark.e2e
KEY = "fleet-test-key"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from two_replicas(tmp_path_factory.mktemp("adapters"), "round_robin", "inline", api_key=KEY)


def test_round_robin_alternates_replicas_whatever_the_adapter(fleet):
    seen = [replica_of(fleet, "adapter-0000", KEY) for _ in range(8)]
    assert len(set(seen)) == 2
    assert all(a != b for a, b in zip(seen, seen[1:])), seen


def test_the_api_key_guards_forwarded_requests(fleet):
    status, _, body = post(fleet, "/v1/completions", {"model": "adapter-0001", "prompt": "hi", "max_tokens": 2})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, _ = post(fleet, "/v1/completions", {"model": "adapter-0001", "prompt": "hi", "max_tokens": 2}, "bad")
    assert status == 401
