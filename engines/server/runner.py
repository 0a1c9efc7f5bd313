"""Serving an app on a host and port: blocking (the CLI) or in a background thread (tests, notebooks)."""
from __future__ import annotations

import asyncio
import signal
import threading

from aiohttp import web

# a client that leaves cancels its handler; on shutdown, streams still open get 5 s to finish
RUNNER_KWARGS = {"handler_cancellation": True, "access_log": None, "shutdown_timeout": 5.0}


async def _start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, **RUNNER_KWARGS)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]  # the real port when port 0 was asked


def serve_forever(app: web.Application, host: str, port: int, on_ready=None, on_stop=None) -> None:
    """Serve until SIGINT/SIGTERM; on_ready(port) runs once the socket listens. on_stop(forced) is awaited
    before the site closes (a drain); `forced` is an asyncio.Event set by a second signal."""

    async def main() -> None:
        runner, bound = await _start_site(app, host, port)
        stop, forced = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            (forced if stop.is_set() else stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if on_ready:
            on_ready(bound)
        try:
            await stop.wait()
            if on_stop is not None:
                await on_stop(forced)
        finally:
            await runner.cleanup()

    asyncio.run(main())


class ServerThread:
    """Runs an app on its own event loop in a daemon thread; `with ServerThread(app) as s: s.url ...`."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._runner, self.port = self.loop.run_until_complete(_start_site(self.app, self.host, self.port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"the server failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
