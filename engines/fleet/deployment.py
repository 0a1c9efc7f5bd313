"""Ray Serve deployments: EngineReplica (one engine and the single server's app each) behind FleetIngress.

The ingress reads which adapter a request names and calls a replica with it as the multiplexed model id, so
Ray's router prefers a replica that holds that adapter unless it is at max_ongoing_requests, then another
one, which loads it. A replica's adapters are Ray Serve's multiplexed models: an LRU of
max_adapters_per_replica whose load registers the adapter on the engine through the single server's own
/v1/load_lora_adapter route, and whose eviction unregisters it once no request of it is in flight. Every
request is answered by the single server's code (engines/server) running in a child process of the replica
(engines/fleet/engine_proc.py) on a loopback port, so routes, validation and errors are the same byte for byte.
"""
from __future__ import annotations

import asyncio
import json
import time
import types
from collections import Counter
from typing import Any, AsyncIterator

import aiohttp
from ray import serve
from ray.experimental import internal_kv
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from engines.fleet.names import merge_metrics, requested_adapter
from engines.fleet.relay import DEFAULT_STREAM_BATCH_MS, coalesce
from engines.server.protocol import ApiError

REPLICA_HEADER = "x-lora-fleet-replica"
METRICS_KEY = "lora_fleet/metrics/"  # + replica id: the replica's latest /metrics page, pushed every second
METRICS_FRESH_S = 10.0  # pages older than this (a replica that went away) are left out of /metrics
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "host", "date", "server"}  # set again by Serve


class EngineReplica:
    """One engine served by engines.server's app on 127.0.0.1:<free port>, in a child process of this replica."""

    def __init__(self, engine_config: dict[str, Any], server_options: dict[str, Any], threads: int = 0,
                 where: str = "process", stream_batch_ms: float = DEFAULT_STREAM_BATCH_MS) -> None:
        from engines.fleet.engine_proc import REPLICA_ENGINES

        # "process" (default): the engine in a child process, since this one relays every token chunk (on an
        # H200 pair, with the engine in this process, its steps ran ~3x slower than the single server's)
        self.engine = REPLICA_ENGINES[where](engine_config, server_options, threads)
        self.id = serve.get_replica_context().replica_tag
        self.stream_batch_s = stream_batch_ms / 1000.0  # relay/coalesce: at most one item per stream and interval
        self.session: aiohttp.ClientSession | None = None
        key = server_options.get("api_key")  # the replica's own adapter loads pass the server's key check
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.in_flight: Counter = Counter()  # adapter -> requests running here
        self.evicted: set[str] = set()  # evicted while requests of it ran: unregistered when the last ends
        self.pusher = asyncio.get_event_loop().create_task(self._push_metrics())

    async def _http(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(self.engine.url, timeout=aiohttp.ClientTimeout(total=None))
        return self.session

    async def _post(self, path: str, body: dict) -> None:
        session = await self._http()
        async with session.post(path, json=body, headers=self.auth) as r:  # never on forwarded requests
            if r.status != 200 and not (path.endswith("/unload_lora_adapter") and r.status == 404):
                raise RuntimeError(f"{path} {body}: HTTP {r.status} {await r.text()}")

    async def load_adapter(self, name: str) -> types.SimpleNamespace:
        """Register adapter `name` (a folder under the adapter root); the lease's __del__ is Ray's eviction."""
        self.evicted.discard(name)
        await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": name})
        lease = types.SimpleNamespace(name=name)

        async def evict() -> None:
            if self.in_flight[name]:
                self.evicted.add(name)
                return
            try:
                await self._post("/v1/unload_lora_adapter", {"lora_name": name})
            except aiohttp.ClientError:  # Ray unloads every model at shutdown, after the server stopped
                pass

        lease.__del__ = evict  # an instance attribute: Ray calls it on eviction, the garbage collector does not
        return lease

    async def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> AsyncIterator[Any]:
        """The single server's answer: first (status, headers), then the body in chunks as they stream."""
        name = serve.get_multiplexed_model_id()
        if name:
            await self.load_adapter(name)  # the multiplexed LRU's: a no-op when the adapter is resident
            self.in_flight[name] += 1
        try:
            session = await self._http()
            async with session.request(method, path, headers=headers, data=body) as r:
                out = {k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS}
                yield r.status, {**out, REPLICA_HEADER: self.id}
                async for chunk in coalesce(r.content.iter_any(), self.stream_batch_s):
                    yield chunk
        finally:
            if name:
                self.in_flight[name] -= 1
                if not self.in_flight[name] and name in self.evicted:
                    self.evicted.discard(name)
                    await self._post("/v1/unload_lora_adapter", {"lora_name": name})

    async def _push_metrics(self) -> None:
        while True:
            try:
                session = await self._http()
                async with session.get("/metrics") as r:
                    page = await r.text()
                internal_kv._internal_kv_put(METRICS_KEY + self.id, json.dumps({"t": time.time(), "page": page}))
            except Exception:  # a slow or failing scrape must never take the replica down
                pass
            await asyncio.sleep(1.0)

    def __del__(self) -> None:
        self.engine.stop()


def replica_class(max_adapters: int) -> type:
    """EngineReplica whose multiplexed adapter LRU holds max_adapters (Ray fixes the size at decoration)."""

    class Replica(EngineReplica):
        # the same attribute name as the function: Ray finds `self` by it
        load_adapter = serve.multiplexed(max_num_models_per_replica=max_adapters)(EngineReplica.load_adapter)

    Replica.__name__ = Replica.__qualname__ = "EngineReplica"
    return Replica


RUNTIME_LORA_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
RUNTIME_LORA_OFF = ApiError(403, "loading and unloading adapters at run time is not offered by a fleet: every "
                                 "replica loads the adapters of --adapters on demand", code="runtime_lora_off")


class FleetIngress:
    """The HTTP entry: picks the multiplexed model id and streams the chosen replica's answer back."""

    def __init__(self, replicas, base_names: list[str], catalog: dict[str, str]) -> None:
        self.replicas = replicas
        self.base_names, self.catalog = set(base_names), dict(catalog)  # adapter name -> its folder

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if path == "/metrics":
            return Response(merge_metrics(_replica_pages()), media_type="text/plain; version=0.0.4")
        if path in RUNTIME_LORA_PATHS:  # the replicas load from the catalog themselves; clients may not
            return Response(json.dumps(RUNTIME_LORA_OFF.body()), status_code=403, media_type="application/json")
        body = await request.body()
        adapter = requested_adapter(path, body, self.base_names, set(self.catalog))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        query = f"?{request.url.query}" if request.url.query else ""
        stream = self.replicas.options(stream=True, multiplexed_model_id=adapter).forward.remote(
            request.method, path + query, headers, body)
        status, out = await stream.__anext__()
        if path == "/v1/models" and status == 200:
            return await self._models(stream, out)

        async def rest() -> AsyncIterator[bytes]:
            async for chunk in stream:
                yield chunk

        return StreamingResponse(rest(), status_code=status, headers=out)


    async def _models(self, stream, headers: dict[str, str]) -> Response:
        """A replica's list (the base and the adapters it holds) completed with the rest of the catalog, in the
        single server's entry shape, so a client sees every adapter the fleet serves."""
        data = json.loads(b"".join([chunk async for chunk in stream]))
        listed = {m["id"] for m in data["data"]}
        base = next(m for m in data["data"] if not m.get("parent"))
        adapters = [m for m in data["data"] if m.get("parent")]
        adapters += [{"id": name, "object": "model", "created": base["created"], "owned_by": base["owned_by"],
                      "root": folder, "parent": base["id"]}
                     for name, folder in self.catalog.items() if name not in listed]
        data["data"] = [base, *sorted(adapters, key=lambda m: m["id"])]  # as the single server orders them
        return Response(json.dumps(data), media_type="application/json",
                        headers={REPLICA_HEADER: headers.get(REPLICA_HEADER, "")})


def _replica_pages() -> dict[str, str]:
    now, pages = time.time(), {}
    for key in internal_kv._internal_kv_list(METRICS_KEY):
        key = key.decode() if isinstance(key, bytes) else key
        raw = internal_kv._internal_kv_get(key)
        if raw:
            item = json.loads(raw)
            if now - item["t"] <= METRICS_FRESH_S:
                pages[key[len(METRICS_KEY):]] = item["page"]
    return pages
