"""The policy layer stays I/O-free, so the real stack can run the very same decisions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_POLICY = {"simpy", "asyncio", "time", "socket", "threading", "datetime", "random", "real", "aiohttp", "starlette"}
FORBIDDEN_IN_SIM = {"asyncio", "socket", "real", "aiohttp", "starlette", "uvicorn", "locust", "scenarios", "reports"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_policies_import_no_clock_simulator_network_or_global_rng() -> None:
    files = sorted((ROOT / "sim" / "policy").glob("*.py"))
    assert files, "sim/policy has no modules"
    for path in files:
        bad = _imports(path) & FORBIDDEN_IN_POLICY
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_sim_does_not_depend_on_the_real_stack_or_the_network() -> None:
    for path in sorted((ROOT / "sim").rglob("*.py")):
        bad = _imports(path) & FORBIDDEN_IN_SIM
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_dependencies_point_one_way() -> None:
    """sim <- real <- scenarios -> reports: real never reaches up, reports never runs anything."""
    rules = {"real": {"scenarios", "reports"}, "reports": {"scenarios", "real", "simpy"}}
    for package, forbidden in rules.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _imports(path) & forbidden
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
