"""Bad input in every form gives one line on stderr, no traceback, exit 2; --help states precedence and exit codes."""
import json
import socket
from pathlib import Path

import pytest
import yaml

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
BURSTY = str(REPO / "workloads" / "bursty30.yaml")


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"harness {command}: error: "), err
    return err


def small_workload(tmp_path, **over):
    d = {"name": "w", "duration_s": 2, "model": "tiny", "adapters": {"count": 2}, "traffic": {"rate": 2.0}}
    d.update(over)
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


@pytest.mark.parametrize("argv, words", [
    (["run", BURSTY, "--engine", "vllmm"], "--engine vllmm: 'vllmm' is not an in-process engine"),
    (["run", BURSTY, "--engine", "{bad"], "--engine {bad: not valid JSON"),
    (["run", BURSTY, "--engine", '{"kind": "external", "url": "http://127.0.0.1:1", "gpus": 2}'],
     "unknown key(s) ['gpus']"),
    (["run", BURSTY, "--set", "traffic.rat=16"], "--set traffic.rat=16: traffic: unknown key(s) ['rat']"),
    (["run", BURSTY, "--set", "rate"], "--set 'rate': must be KEY=VALUE"),
    (["run", BURSTY, "--workers", "0"], "--workers 0: loadgen.workers: 0 must be >= 1"),
    (["run", "nope.yaml"], "workload file nope.yaml does not exist"),
    (["trace", BURSTY, "--set", "duration_s=-1"], "--set duration_s=-1: duration_s: -1 must be > 0"),
    (["trace", BURSTY, "--out", "/proc/no/trace.csv"], "--out /proc/no/trace.csv: cannot write it"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    assert words in one_line_error(capsys, argv[0])


def test_a_workload_error_names_the_file_and_key(tmp_path, capsys):
    path = small_workload(tmp_path, traffic={"rate": -1})
    assert main(["run", path]) == 2
    assert f"{path}: traffic.rate: -1 must be > 0" in one_line_error(capsys, "run")


def test_trace_takes_set_and_says_when_the_cpu_section_applied(capsys):
    assert main(["trace", BURSTY, "--machine", "cpu", "--set", "traffic.rate=16", "--top", "0"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA here: the workload's cpu: section applies" in out and "model: llama3-8b -> tiny" in out
    assert "traffic.rate: 26.0 is overridden by --set traffic.rate=16" in out
    assert main(["trace", BURSTY, "--machine", "cuda", "--top", "0"]) == 0
    assert "cpu: section" not in capsys.readouterr().out


def test_serve_refuses_a_corrupt_adapter_folder_in_one_line(tmp_path, capsys):
    bad = tmp_path / "adapters" / "broken"
    bad.mkdir(parents=True)
    (bad / "adapter_config.json").write_text("{not json")
    (bad / "adapter_model.safetensors").write_bytes(b"")
    assert main(["serve", "--model", "tiny", "--adapters", str(tmp_path / "adapters"), "--port", "0",
                 "--engine-config", json.dumps({"device": "cpu"})]) == 2
    err = one_line_error(capsys, "serve")
    assert f"--adapters {tmp_path / 'adapters'}: " in err and "malformed JSON" in err


def test_serve_refuses_a_busy_port_in_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--model", "tiny", "--port", str(port)]) == 2
    assert f"--port {port}: 127.0.0.1:{port} is in use" in one_line_error(capsys, "serve")


@pytest.mark.parametrize("argv, words", [
    (["--engine", "warp"], "--engine warp: not one of merged, multilora, peft"),
    (["--max-queue", "0"], "--max-queue 0: must be >= 1"),
    (["--max-body-bytes", "10"], "--max-body-bytes 10: must be >= 1024"),
    (["--port", "70000"], "--port 70000: must be in [0, 65535]"),
])
def test_serve_names_the_flag_as_typed(argv, words, capsys):
    assert main(["serve", *argv]) == 2
    assert words in one_line_error(capsys, "serve")


def test_help_states_exit_codes_and_precedence(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "130  interrupted" in out and "2    bad input or usage" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "then its cpu: section on a machine without CUDA" in out and "an explicit override always wins" in out
    assert main([]) == 2
