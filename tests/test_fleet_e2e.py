"""Two CPU replicas of `tiny` behind Ray Serve: adapter affinity, the single server's routes and errors, /metrics."""
from __future__ import annotations

import collections
import json
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("ray.serve", reason='the fleet needs Ray Serve: pip install -e ".[fleet]"')

from engines.adapters.synth import make_adapters  # noqa: E402
from engines.config import EngineConfig  # noqa: E402
from engines.fleet.deployment import REPLICA_HEADER  # noqa: E402
from engines.fleet.launch import start_fleet, stop_fleet  # noqa: E402
from engines.model.config import ModelArgs  # noqa: E402
from engines.server.metrics import parse_prometheus  # noqa: E402
from engines.server.state import ServerOptions  # noqa: E402

pytestmark = pytest.mark.e2e


def post(url, path, body, key=None):
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **auth})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def two_replicas(root, routing: str, replica_engine: str = "process", **options):
    """Start 2 CPU replicas of tiny over 3 adapters (small object store, 2 CPUs); yield the URL; stop Ray.
    replica_engine: each engine in a child process of its replica, or inline in the replica's process."""
    make_adapters(ModelArgs.from_name("tiny"), 3, [4], ["q_proj", "v_proj"], root)
    config = EngineConfig(model="tiny", adapters=str(root), max_num_seqs=8, num_kv_blocks=128, cuda_graphs=False)
    try:
        yield start_fleet(config, ServerOptions(**options), 2, 2, "127.0.0.1", 0, routing=routing,
                          replica_engine=replica_engine, ray_init={"num_cpus": 2, "object_store_memory": 200 << 20})
    finally:
        stop_fleet()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from two_replicas(tmp_path_factory.mktemp("adapters"), "affinity")


def replica_of(url, model, key=None):
    status, headers, body = post(url, "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2}, key)
    assert status == 200, body
    return headers[REPLICA_HEADER]


def tokens_by_replica(url) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        samples = parse_prometheus(r.read().decode())
    return {k.split('replica="')[1].split('"')[0]: v for k, v in samples.items()
            if k.startswith("lora_fleet_output_tokens_total") and 'replica="' in k}


def first_request(url, model) -> str:
    """One request for `model`; returns once the replica that served (and loaded) it has pushed a /metrics page
    counting it. Ray pushes a replica's adapter ids every 0.1 s, our pages every 1 s: by then the router knows
    the holder (before that, Ray sends a second request to the replica with the fewest adapters, so both load it)."""
    before = tokens_by_replica(url)
    replica = replica_of(url, model)
    deadline = time.monotonic() + 60
    while tokens_by_replica(url).get(replica, 0.0) <= before.get(replica, 0.0) and time.monotonic() < deadline:
        time.sleep(0.2)
    return replica


def test_repeat_requests_for_one_adapter_stay_on_one_replica(fleet):
    # sequential requests never overload a replica: once the first load is known, Ray routes to the holder
    for model in ("adapter-0000", "tiny:adapter-0001"):
        holder = first_request(fleet, model)
        counts = collections.Counter(replica_of(fleet, model) for _ in range(20))
        # random routing would put >= 18 of 20 on one replica with p < 0.001
        assert counts.most_common(1)[0][1] >= 18 and counts[holder] >= 18, (model, holder, counts)


def test_same_routes_and_errors_as_the_single_server(fleet):
    with urllib.request.urlopen(fleet + "/v1/models", timeout=60) as r:
        models = json.loads(r.read())["data"]
    assert [m["id"] for m in models] == ["tiny", "adapter-0000", "adapter-0001", "adapter-0002"]
    assert all(m["parent"] == "tiny" for m in models[1:])  # the whole catalog, whichever replica answered
    status, _, body = post(fleet, "/v1/completions", {"model": "nope", "prompt": "hi"})
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    status, _, body = post(fleet, "/v1/completions", {"model": "adapter-0002", "prompt": "hi", "max_tokens": -1})
    assert status == 400 and json.loads(body)["error"]["param"] == "max_tokens"
    status, _, body = post(fleet, "/v1/chat/completions", {"model": "adapter-0002", "stream": True, "max_tokens": 3,
                                                           "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
    status, _, body = post(fleet, "/generate", {"inputs": "hi", "parameters": {"adapter_id": "adapter-0002",
                                                                               "max_new_tokens": 2}})
    assert status == 200 and "generated_text" in json.loads(body)
    # the replicas load adapters themselves; a client's runtime load is refused, as on a single server without
    # --enable-runtime-lora
    status, _, body = post(fleet, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "adapter-0001"})
    assert status == 403 and json.loads(body)["error"]["code"] == "runtime_lora_off"


def test_metrics_merge_both_replicas_with_a_replica_label(fleet):
    deadline = time.monotonic() + 60
    while True:  # replicas push their page every second
        with urllib.request.urlopen(fleet + "/metrics", timeout=30) as r:
            samples = parse_prometheus(r.read().decode())
        replicas = {k.split('replica="')[1].split('"')[0] for k in samples if "lora_fleet_output_tokens_total" in k}
        if len(replicas) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(replicas) == 2
    assert sum(v for k, v in samples.items() if k.startswith("lora_fleet_output_tokens_total")) > 0

