"""`harness run` of a workload whose engine entry asks for 2 replicas: the fleet is started, measured and stopped."""
from __future__ import annotations

import psutil
import pytest

pytest.importorskip("ray.serve", reason='the fleet needs Ray Serve: pip install -e ".[fleet]"')

from harness.runner import run_engine  # noqa: E402
from harness.spec import load_workload  # noqa: E402
from tests.test_run_e2e import check_run, workload  # noqa: E402

pytestmark = pytest.mark.e2e


def test_run_with_a_two_replica_engine_entry(tmp_path):
    spec = load_workload(workload(tmp_path, engines=[{"name": "multilora", "replicas": 2}]))
    before = {p.pid for p in psutil.process_iter()}
    run_dir = run_engine(spec, spec.engine_list()[0], tmp_path / "runs", progress=False, log=lambda s: None)
    run = check_run(run_dir, spec)
    assert run.summary["counts"]["ok"] == run.summary["counts"]["total"] and run.summary["valid"]
    assert run.config["engine"]["replicas"] == 2
    labels = run.server["labels"].dropna().astype(str)  # server.csv is long: t, metric, labels, value
    replicas = {x.split('replica="')[1].split('"')[0] for x in labels if 'replica="' in x}
    assert len(replicas) == 2  # the merged /metrics was scraped with both replicas' samples
    left = [p for p in psutil.process_iter(["pid", "name", "cmdline"])
            if p.info["pid"] not in before and "ray" in " ".join(p.info["cmdline"] or []).lower()]
    _, alive = psutil.wait_procs(left, timeout=60)  # Ray's workers exit shortly after its raylet
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
