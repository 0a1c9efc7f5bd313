"""Open-loop load generation with Locust, in its own process: `python -m harness.loadgen` (gevent lives only there).

Modules that import gevent or locust (process, user, client, scheduler) must never be imported by the harness
process; chunks, recorder and stub_server are plain Python and safe everywhere.
"""
