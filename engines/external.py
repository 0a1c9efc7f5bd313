"""External servers: attach to a URL, or launch one from a preset or command template, wait for health, stop it."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engines.external_prep import check_model_path, launch_env, server_python, with_lora_limits
from engines.external_presets import PRESETS
from engines.procs import ChildProcess


def _key(doc: str, default: Any = None, factory: Callable[[], Any] | None = None) -> Any:
    """A spec field with its one-line documentation."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class ExternalSpec:
    """What ExternalServer needs; built from a dict with unknown keys refused. Each key's doc is the one
    `spec_help()` prints and docs/peers.md lists."""

    url: str | None = _key("attach to a running server at this URL (nothing is launched)")
    preset: str | None = _key("launch one: vllm | sglang | tgi | lorax | self (engines/external_presets.py)")
    command: list[Any] | str | None = _key("launch a template of one's own (placeholders: external_presets.py)")
    model: str | None = _key("base model: a checkpoint folder (`harness model make`) or a hub id; self: a preset")
    adapters: str | dict[str, str] | None = _key("folder of adapter folders, or name -> folder (default: the run's)")
    max_loras: int | None = _key("adapters in one batch (default: the adapter count, capped by the server)")
    max_lora_rank: int | None = _key("largest adapter rank (default: the adapters' largest, as the server rounds)")
    python: str | None = _key("the server's Python for {python} (default: this one, else the preset's venv)")
    engine: str = _key("self preset: which in-process engine", "multilora")
    engine_options: dict[str, Any] = _key("self preset: more EngineConfig fields", factory=dict)
    extra_args: list[str] = _key("appended to the command, e.g. [\"--dtype\", \"float32\"]", factory=list)
    env: dict[str, str] = _key("environment of the server, over the preset's and ours", factory=dict)
    host: str = _key("where it listens", "127.0.0.1")
    port: int = _key("0: a free port", 0)
    health_path: str | None = _key("polled until 200 (default: the preset's, else /health)")
    timeout_s: float = _key("seconds to become healthy (big models load for minutes)", 600.0)
    stop_timeout_s: float = _key("seconds between SIGTERM and SIGKILL at stop", 30.0)
    log_path: str | None = _key("the server's stdout and stderr (default: the run's server.log or a temp file)")
    cwd: str | None = _key("its working folder (self preset: this checkout)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExternalSpec":
        if not isinstance(data, dict):
            raise ValueError(f"external: the spec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"external: unknown key(s) {unknown}; known: {sorted(known)}")
        spec = cls(**data)
        spec.check()
        return spec

    def check(self) -> None:
        modes = [k for k in ("url", "preset", "command") if getattr(self, k)]
        if len(modes) != 1:
            raise ValueError(f"external: give exactly one of url, preset or command (got {modes or 'none'})")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"external: preset={self.preset!r} is unknown; presets: {sorted(PRESETS)}")
        if self.preset and not self.model:
            raise ValueError(f"external: preset {self.preset!r} needs model (the base model to serve)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"external: url={self.url!r} must start with http:// or https://")
        for key in ("max_loras", "max_lora_rank"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"external: {key}={getattr(self, key)!r} must be an integer >= 1")
        if self.timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("external: timeout_s and stop_timeout_s must be > 0")
        if isinstance(self.adapters, str) and not Path(self.adapters).is_dir():
            raise ValueError(f"external: adapters={self.adapters!r} is not a folder of adapter folders")

    def adapter_paths(self) -> dict[str, str]:
        """name -> folder of every adapter to serve (sub-folders of `adapters`, named by folder)."""
        if not self.adapters:
            return {}
        if isinstance(self.adapters, dict):
            return {str(k): str(v) for k, v in self.adapters.items()}
        from engines.adapters.folders import adapter_folders

        return {p.name: str(p.resolve()) for p in adapter_folders(self.adapters)}


def spec_help() -> str:
    """Every key of an external engine entry with its doc, one per line (for --help and docs/peers.md)."""
    fields = dataclasses.fields(ExternalSpec)
    width = max(len(f.name) for f in fields)
    return "\n".join(f"  {f.name:<{width}}  {f.metadata['doc']}" for f in fields)


LIST_PLACEHOLDERS = ("lora_modules",)  # a whole argument that expands to several


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _values(spec: ExternalSpec, port: int, python: str | None = None) -> dict[str, Any]:
    adapters = spec.adapter_paths()
    modules = [f"{name}={path}" for name, path in adapters.items()]
    adapters_dir = spec.adapters if isinstance(spec.adapters, str) else None
    limits = {"max_loras": spec.max_loras, "max_lora_rank": spec.max_lora_rank}
    engine_config = {**{k: v for k, v in limits.items() if v is not None}, **spec.engine_options}
    return {"model": spec.model, "host": spec.host, "port": port, "max_loras": spec.max_loras,
            "max_lora_rank": spec.max_lora_rank, "python": python or spec.python or sys.executable, "engine": spec.engine,
            "engine_config": json.dumps(engine_config), "adapters_dir": adapters_dir,
            "lora_modules": modules or None, "lora_modules_csv": ",".join(modules) or None}


def _expand(token: str, values: dict[str, Any]) -> list[str] | None:
    """One template token -> its arguments; None when a placeholder in it has no value."""
    if token[1:-1] in LIST_PLACEHOLDERS and token == "{" + token[1:-1] + "}":
        return list(values[token[1:-1]]) if values[token[1:-1]] else None
    try:
        names = [n for _, n, _, _ in string.Formatter().parse(token) if n]
    except ValueError as exc:
        raise ValueError(f"external: bad template argument {token!r} ({exc})") from exc
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ValueError(f"external: template argument {token!r} names unknown placeholder(s) {unknown}; "
                         f"known: {sorted(values)}")
    if any(values[n] is None for n in names):
        return None
    return [token.format(**values)]


def build_command(spec: ExternalSpec, port: int, python: str | None = None) -> list[str]:
    """The argument list a preset or command template gives for this spec and port ({python}: `python`,
    else the spec's, else this interpreter)."""
    template = PRESETS[spec.preset].command if spec.preset else spec.command
    if isinstance(template, str):
        template = shlex.split(template)
    values = _values(spec, port, python)
    args: list[str] = []
    for item in template:
        if isinstance(item, list):  # optional group
            parts = [_expand(str(t), values) for t in item]
            if all(p is not None for p in parts):
                args += [a for p in parts for a in p]
            continue
        expanded = _expand(str(item), values)
        if expanded is None:
            raise ValueError(f"external: template argument {item!r} needs a value the spec does not give "
                             "(model? adapters?); put it in an optional group [..] or set it")
        args += expanded
    return args + [str(a) for a in spec.extra_args]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


class ExternalServer:
    """`with ExternalServer(spec) as url:` or `.start() -> base_url` ... `.stop()`.

    Launched servers run in their own process group with stdout and stderr in `log_path`; stop() sends
    SIGTERM to the group, waits stop_timeout_s, then SIGKILL.
    """

    def __init__(self, spec: dict[str, Any] | ExternalSpec, log: Callable[[str], None] = print) -> None:
        self.spec = spec if isinstance(spec, ExternalSpec) else ExternalSpec.from_dict(spec)
        self.log = log
        self.child: ChildProcess | None = None  # a launched server (engines.procs: own group, dies with us)
        self.proc: subprocess.Popen | None = None
        self.base_url: str | None = None
        self.command: list[str] | None = None
        self.log_path: Path | None = None
        self._log_file = None
        self._attached = False  # start() found the url healthy and stop() was not called

    @property
    def health_path(self) -> str:
        if self.spec.health_path:
            return self.spec.health_path
        return PRESETS[self.spec.preset].health_path if self.spec.preset else "/health"

    def start(self) -> str:
        if self.spec.url:
            self.base_url = self.spec.url.rstrip("/")
            self._wait_healthy()
            self._attached = True
            return self.base_url
        check_model_path(self.spec)
        self.spec = with_lora_limits(self.spec)
        port = self.spec.port or free_port(self.spec.host)
        self.command = build_command(self.spec, port, server_python(self.spec))
        if shutil.which(self.command[0]) is None and not Path(self.command[0]).is_file():
            preset = PRESETS.get(self.spec.preset) if self.spec.preset else None
            hint = preset.install if preset is not None and preset.install else f"install {self.command[0]}"
            raise FileNotFoundError(f"external: {self.command[0]!r} is not on PATH; {hint}; or attach with url:")
        self.log_path = Path(self.spec.log_path) if self.spec.log_path else Path(
            tempfile.mkstemp(prefix=f"external-{self.spec.preset or 'command'}-", suffix=".log")[1])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env, added = launch_env(self.spec)
        shown = "".join(f"{k}={v} " for k, v in added.items())
        self.log(f"external: {shown}{shlex.join(self.command)}  (log: {self.log_path})")
        self._log_file = open(self.log_path, "ab")
        self.child = ChildProcess(self.command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                  env=env, cwd=self._cwd())
        self.proc = self.child.start()
        self.base_url = f"http://{self.spec.host}:{port}"
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _cwd(self) -> str | None:
        """The self preset runs `python -m engines.server` from this checkout unless told otherwise."""
        if self.spec.cwd is None and self.spec.preset == "self":
            return str(Path(__file__).resolve().parents[1])
        return self.spec.cwd

    def _log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join("  | " + line for line in lines)

    def _wait_healthy(self) -> None:
        url = self.base_url + self.health_path
        deadline = time.monotonic() + self.spec.timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"external: the server exited with code {self.proc.returncode} before it was "
                                   f"healthy; its log {self.log_path} ends with:\n{self._log_tail()}")
            if _get(url, timeout=min(5.0, self.spec.timeout_s))[0] == 200:
                return
            if time.monotonic() > deadline:
                where = f"; its log {self.log_path} ends with:\n{self._log_tail()}" if self.proc else ""
                raise TimeoutError(f"external: {url} did not answer 200 within {self.spec.timeout_s} s "
                                   f"(raise timeout_s for big models){where}")
            time.sleep(0.25)

    def alive(self) -> bool:
        """A launched server's process still runs (an attached one is assumed alive; health says more)."""
        if self.proc is not None:
            return self.proc.poll() is None
        return self._attached

    def models(self) -> list[str]:
        """Model ids the server lists at GET /v1/models (the base and the adapters, for OpenAI-style servers)."""
        status, body = _get(self.base_url + "/v1/models")
        if status != 200:
            raise RuntimeError(f"external: GET {self.base_url}/v1/models answered {status}")
        return [m["id"] for m in json.loads(body)["data"]]

    def stop(self) -> int | None:
        """Terminate the launched server's process group, kill it after stop_timeout_s; its exit code."""
        child, self.child, self.proc = self.child, None, None
        self._attached = False
        code = None
        if child is not None:
            code = child.stop(grace_s=self.spec.stop_timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
