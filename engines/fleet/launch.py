"""Starting and stopping a fleet: Ray, Serve's HTTP proxy on host:port, the ingress and N engine replicas."""
from __future__ import annotations

import dataclasses
import socket
import sys
from typing import Any

from engines.config import EngineConfig
from engines.fleet.relay import DEFAULT_STREAM_BATCH_MS
from engines.server.state import ServerOptions

INSTALL = 'pip install -e ".[fleet]"'


def require_ray() -> None:
    """Ray Serve is an optional extra: say how to get it."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--replicas needs Ray Serve, which is not installed ({exc.name}); run: {INSTALL}") from None


ROUTERS = {"affinity": None,  # Ray's own: multiplexed model ids, a replica holding the adapter first
           "round_robin": "engines.fleet.routers:RoundRobinRouter"}


def fleet_app(config: EngineConfig, options: ServerOptions, replicas: int, max_adapters: int, *,
              gpus_per_replica: float = 0.0, cpu_threads: int = 1, max_ongoing: int | None = None,
              routing: str = "affinity", replica_engine: str = "process",
              stream_batch_ms: float = DEFAULT_STREAM_BATCH_MS, ingress_replicas: int | None = None):
    """The Serve application: N EngineReplica (adapters loaded on demand) behind FleetIngress replicas (default
    2 per engine replica, as Ray Serve LLM: every token chunk passes an ingress)."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from engines.adapters.folders import check_adapter_folders
    from engines.fleet.deployment import FleetIngress, replica_class
    from engines.fleet.engine_proc import REPLICA_ENGINES

    catalog = {p.name: str(p.resolve()) for p in check_adapter_folders(config.adapters)} if config.adapters else {}
    engine = {**config.to_dict(), "adapters": None}
    # each replica's own server loads its multiplexed adapters through its runtime-load route (loopback, behind
    # the ingress, which refuses those routes to clients), so that route is on there whatever the fleet's flag
    server = {**dataclasses.asdict(options), "adapter_root": options.adapter_root or config.adapters,
              "model_aliases": tuple(options.model_aliases), "runtime_lora": True,
              "max_runtime_loras": max(len(catalog), max_adapters, 1)}
    if routing not in ROUTERS:
        raise ValueError(f"--routing {routing!r}: use one of {', '.join(ROUTERS)}")
    ongoing = max_ongoing or config.max_num_seqs
    router = {"request_router_config": RequestRouterConfig(request_router_class=ROUTERS[routing])} \
        if ROUTERS[routing] else {}
    replica = serve.deployment(replica_class(max_adapters), name="EngineReplica", num_replicas=replicas,
                               max_ongoing_requests=ongoing,
                               ray_actor_options={"num_cpus": 0, "num_gpus": gpus_per_replica}, **router)
    ingress = serve.deployment(FleetIngress, name="FleetIngress", num_replicas=ingress_replicas or 2 * replicas,
                               max_ongoing_requests=ongoing * replicas, ray_actor_options={"num_cpus": 0})
    if replica_engine not in REPLICA_ENGINES:
        raise ValueError(f"--replica-engine {replica_engine!r}: use one of {', '.join(REPLICA_ENGINES)}")
    bound = replica.bind(engine, server, 0 if gpus_per_replica else cpu_threads, replica_engine, stream_batch_ms)
    return ingress.bind(bound, [config.model, *options.model_aliases], catalog)


def start_fleet(config: EngineConfig, options: ServerOptions, replicas: int, max_adapters: int, host: str,
                port: int, *, ray_init: dict[str, Any] | None = None, **kwargs) -> str:
    """Start Ray (if not running), Serve on host:port and the fleet; returns the URL once every replica is up."""
    import ray
    from ray import serve

    require_ray()
    if not ray.is_initialized():
        # requests and token chunks are small: a 256 MB object store is plenty (Ray's default takes 30% of RAM)
        ray.init(**{"include_dashboard": False, "log_to_driver": False, "object_store_memory": 256 << 20,
                    **(ray_init or {})})
    gpus = 1.0 if config.resolved_device().startswith("cuda") else 0.0
    port = port or _free_port(host)  # Serve's proxy needs a number: 0 picks a free one here
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(fleet_app(config, options, replicas, max_adapters, gpus_per_replica=gpus, **kwargs),
                  name="lora-fleet", route_prefix="/")
    except RuntimeError as exc:  # Ray names the deployment that failed; its status holds the replica's reason
        raise RuntimeError(_why_failed() or str(exc)) from exc
    return f"http://{host}:{port}"


def _why_failed() -> str:
    """The failed deployment's reason from Serve's status (the last line of the replica's error), or ''."""
    from ray import serve

    try:
        applications = serve.status().applications.values()
    except Exception:  # the status itself unavailable: Ray's own message is what there is
        return ""
    for app in applications:
        for name, deployment in app.deployments.items():
            lines = (deployment.message or "").strip().splitlines()
            if "FAILED" in str(deployment.status) and lines:
                return f"{name}: {lines[-1].strip()}"
    return ""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_fleet(timeout_s: float = 60.0) -> None:
    """Serve's shutdown (replicas stop their engines), bounded: past timeout_s Ray itself is shut down, which kills
    the actors. (A fleet that once held a GPU call to its limit had never heard its stop: the script signalled a
    subshell, docs/fleet.md.)"""
    import threading

    import ray
    from ray import serve

    from engines.fleet.routers import TURN_ACTOR, TURN_NAMESPACE

    try:  # round-robin's counter outlives the replicas (detached): on a cluster that stays up, it must go too
        ray.kill(ray.get_actor(TURN_ACTOR, namespace=TURN_NAMESPACE))
    except (ValueError, ray.exceptions.RayError):  # no round-robin fleet, or Ray not reachable any more
        pass
    done = threading.Thread(target=serve.shutdown, name="serve-shutdown", daemon=True)
    done.start()
    done.join(timeout_s)
    if done.is_alive():
        print(f"serve: Serve did not shut down within {timeout_s:.0f} s; stopping Ray", file=sys.stderr, flush=True)
    ray.shutdown()
