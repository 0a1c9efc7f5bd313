"""DESIGN.md's layering, enforced: kernels <- engines <- harness <- reports, reports read files only, no cycle."""
import ast
import subprocess
import sys
from pathlib import Path

import yaml

from fixtures_runs import make_runs, make_sweep

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernels", "engines", "harness", "reports")  # each may import only the layers before it
REPORTS_MAY_IMPORT = {"harness"}  # the reports read run directories through the harness's loaders, never an engine


def imports(path: Path, module_scope_only: bool = False) -> set[str]:
    """Absolute module names a file imports (inside functions too, unless module_scope_only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_scope_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def files(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for rank, layer in enumerate(LAYERS):
        allowed = set(LAYERS[:rank]) if layer != "reports" else REPORTS_MAY_IMPORT
        for f in files(layer):
            for name in imports(f):
                top = name.split(".")[0]
                if top in LAYERS and top != layer and top not in allowed:
                    bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not bad, "layering broken (DESIGN.md: kernels <- engines <- harness <- reports):\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    """Module-scope imports among the project's own modules form no cycle."""
    known = {module_name(f): f for layer in LAYERS for f in files(layer)}
    graph = {}
    for name, f in known.items():
        targets = set()
        for imported in imports(f, module_scope_only=True):
            while imported and imported not in known:  # `from a.b import c`: c may be a name, not a module
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for node in graph:
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_report_with_its_planner_loads_no_engine_at_runtime(tmp_path):
    """`harness report --html` (the reports package in its own process) with a sweep to plan: no engine, kernel or
    torch module is ever imported."""
    runs, sweeps = tmp_path / "runs", tmp_path / "sweeps"
    make_runs(runs)
    spec = yaml.safe_load((ROOT / "workloads" / "bursty30.yaml").read_text())
    make_sweep(sweeps, spec=spec)
    code = ("import sys; from reports.__main__ import main; "
            f"rc = main(['html', {str(runs)!r}, {str(tmp_path / 'r.html')!r}, '--sweeps', {str(sweeps)!r}]); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('engines', 'kernels', 'torch')); "
            "print('RC', rc); print('LOADED', bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "RC 0" in out.stdout, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout[-2000:]
    assert "Planner: the measured workload" in (tmp_path / "r.html").read_text()
