"""The harness: CLI, workloads and traces, load generation, metrics, run storage, sweeps, planning, gates."""
