"""Config errors found before anything runs (issue 8): each is one ConfigError naming its key.

These call the CLI's pre-flight in-process (what `servelab` runs first, without the ~1 s of a
fresh interpreter); tests/test_cli.py runs the console script for the exit-2, one-line contract.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from scenarios.cli import preflight
from scenarios.config import (BYTES_PER_REQUEST, BYTES_PER_WINDOW, KEYS, ServelabConfig, check_memory,
                              markdown_table)
from sim.config import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"
GOOD_PROFILE = {"times_s": {"1": [0.01, 0.012], "4": [0.02]}, "overheads_s": {"before_s": [0.001], "after_s": [0.001]}}


def refused(overrides: list[str]) -> ConfigError:
    """The pre-flight's error for these overrides, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        preflight(overrides)
    assert len(str(info.value).splitlines()) == 1, str(info.value)
    return info.value


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from tmp_path, so files can be named by relative paths as users do."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, content: str | bytes | dict[str, object] | None) -> None:
    if isinstance(content, dict):
        path.write_text(json.dumps(content))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


# --- 1. trace files ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("missing.csv", None, "not found"),
        ("t.csv", "arrival_s\n0.2\n0.1\n", "must be sorted; row 2 (0.1) comes after row 1 (0.2)"),
        ("t.csv", "arrival_s\n", "has no rows"),
        ("t.csv", "", "is empty (0 bytes)"),
        ("t.csv", "time\n0.1\n", "needs a column 'arrival_s' (has: time)"),
        ("t.csv", "arrival_s\n0.1\nsoon\n", "arrival_s must be finite numbers >= 0; row 2 is 'soon'"),
        ("t.csv", "arrival_s;user_id\n0.1;1\n", "looks semicolon-separated"),
        ("t.parquet", b"PAR1 this is not parquet PAR1", "cannot read trace"),
        ("t.csv", "arrival_s\n10\n11\n", "all 2 arrivals of trace"),
        ("t.csv", "arrival_s,user_id\n0.1,1.5\n", "user_id must be integers >= 0; row 1 is 1.5"),
        ("t.csv", "arrival_s,user_id\n0.1,3\n0.2,-1\n", "user_id must be integers >= 0; row 2 is -1"),
    ],
)
def test_bad_trace_is_refused_before_the_run(in_tmp: Path, name: str, content: str | bytes | None, fragment: str) -> None:
    write(in_tmp / name, content)
    error = refused(["arrival.kind=trace", f"arrival.path={name}"])
    assert error.key == "arrival.path" and fragment in str(error) and str(in_tmp / name) in str(error)


def test_trace_that_is_a_directory_says_so(in_tmp: Path) -> None:
    (in_tmp / "traces").mkdir()
    assert "is a directory" in str(refused(["arrival.kind=trace", "arrival.path=traces"]))


def test_trace_past_duration_names_the_first_arrival_and_duration(in_tmp: Path) -> None:
    write(in_tmp / "t.csv", "arrival_s\n4\n6\n")
    error = refused(["arrival.kind=trace", "arrival.path=t.csv", "duration_s=3", "arrival.time_scale=2"])
    assert "the first at 8 s" in str(error) and "duration_s=3" in str(error)


def test_good_trace_passes_and_is_read_once_for_a_sweep(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scenarios.config

    write(in_tmp / "t.csv", "arrival_s,user_id\n0.1,1\n0.5,2\n")
    calls: list[str] = []
    real = scenarios.config.read_trace
    monkeypatch.setattr(scenarios.config, "read_trace", lambda path, scale: calls.append(path) or real(path, scale))
    preflight(["arrival.kind=trace", "arrival.path=t.csv", "seed=1,2,3"])
    assert len(calls) == 1


# --- 2. profile files --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "not found"),
        ("", "is empty"),
        ("{times_s: 1", "is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"meta": {}}, "needs 'times_s'"),
        ({"times_s": {"1": []}}, "times_s[1] must be a non-empty list"),
        ({"times_s": {"one": [0.01]}}, "batch sizes >= 1"),
        ({"times_s": {"1": [0.01]}, "overhead_by_rate": [{"total_s": [0.1]}]}, "finite 'rate'"),
    ],
)
@pytest.mark.parametrize("key, overrides", [("service.profile", ["service.kind=empirical"]), ("overhead.profile", [])])
def test_bad_profile_names_its_key_and_file(in_tmp: Path, content: str | dict[str, object] | None, fragment: str,
                                            key: str, overrides: list[str]) -> None:
    write(in_tmp / "p.json", content)
    error = refused([*overrides, f"{key}=p.json"])
    assert error.key == key and fragment in str(error) and str(in_tmp / "p.json") in str(error)


def test_overhead_profile_without_overhead_samples_is_refused(in_tmp: Path) -> None:
    write(in_tmp / "p.json", {"times_s": {"1": [0.01]}})
    assert "no overhead samples" in str(refused(["overhead.profile=p.json"]))
    preflight(["service.kind=empirical", "service.profile=p.json"])  # enough to replay service times


# --- 3. out_dir --------------------------------------------------------------------------------

def test_out_dir_under_a_file_is_refused(in_tmp: Path) -> None:
    write(in_tmp / "notes.txt", "x")
    error = refused(["out_dir=notes.txt/run"])
    assert error.key == "out_dir" and "is under a file" in str(error)
    assert refused(["out_dir=notes.txt"]).key == "out_dir"


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: chmod 555, or (as root, who ignores modes) a
    read-only mount."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    if not os.access(d, os.W_OK):
        return d
    if Path("/proc/sys").is_dir() and not os.access("/proc/sys", os.W_OK):
        return Path("/proc/sys")
    pytest.skip("no read-only directory available to this user")


def test_out_dir_in_a_read_only_directory_is_refused(read_only_dir: Path) -> None:
    error = refused([f"out_dir={read_only_dir / 'run'}"])
    assert error.key == "out_dir" and "not writable" in str(error)


# --- 4, 5, 6. values the schema types cannot rule out -------------------------------------------

@pytest.mark.parametrize(
    "overrides, key, fragment",
    [
        (["replicas=2", "model.versions=[v1,v1]"], "model.versions", "appears twice"),
        (["model.versions=[a/b]"], "model.versions", "[A-Za-z0-9][A-Za-z0-9_.-]*"),
        (["model.versions=['v 1']"], "model.versions", "cannot be a URL path segment"),
        (["model.versions=[.hidden]"], "model.versions", "cannot be a URL path segment"),
        (["lb.weights=[1,2]"], "lb.weights", "only lb.policy=weighted reads weights, got lb.policy=p2c"),
        (["lb.policy=round_robin", "lb.weights=[1,1]"], "lb.weights", "only lb.policy=weighted"),
        (["lb.policy=weighted", "lb.weights=[1]"], "lb.weights", "one weight per replica (2)"),
        (["lb.policy=weighted", "lb.weights=[1,inf]"], "lb.weights", "finite numbers"),
        (["arrival.rate=inf"], "arrival.rate", "must be a finite number > 0, got inf"),
        (["arrival.rate=nan"], "arrival.rate", "must be a finite number > 0, got nan"),
        (["duration_s=inf"], "duration_s", "must be a finite number > 0, got inf"),
        (["overhead.before_s=inf"], "overhead.before_s", "must be a finite number >= 0, got inf"),
        (["compare.point_duration_s=inf"], "compare.point_duration_s", "must be a finite number > 0, got inf"),
        (["loadgen.max_connections=0"], "loadgen.max_connections", "must be >= 1, got 0"),
        (["loadgen.drain_s=0"], "loadgen.drain_s", "must be > 0, got 0"),
        (["loadgen.start_timeout_s=inf"], "loadgen.start_timeout_s", "must be a finite number > 0, got inf"),
        (["loadgen.nice=-21"], "loadgen.nice", "must be in [-20, 19], got -21"),
        (["loadgen.spin_s=0.5"], "loadgen.spin_s", "must be in [0, 0.01]"),
        (["loadgen.spin_s=-0.001"], "loadgen.spin_s", "must be in [0, 0.01]"),
        (["compare.profile_idle_samples=2"], "compare.profile_idle_samples", "must be >= 5, got 2"),
        (["compare.profile_device_warmup=-1"], "compare.profile_device_warmup", "must be >= 0, got -1"),
        (["compare.profile_point_warmup_s=nan"], "compare.profile_point_warmup_s", "must be a finite number >= 0"),
        (["compare.profile_point_duration_s=0"], "compare.profile_point_duration_s", "must be a finite number > 0"),
    ],
)
def test_value_that_cannot_run_is_refused(overrides: list[str], key: str, fragment: str) -> None:
    error = refused(overrides)
    assert error.key == key and fragment in str(error)


def test_distinct_url_safe_versions_pass() -> None:
    preflight(["replicas=3", "model.versions=[v1,v2-rc.1,2_b]"])


# --- 7. arrival.rate typed for a kind that ignores it --------------------------------------------

@pytest.mark.parametrize(
    "overrides, names",
    [
        (["arrival.kind=bursty", "arrival.rate=300"], "arrival.high_rate"),
        (["arrival.kind=closed", "arrival.rate=300"], "arrival.users and arrival.think_s"),
        (["arrival.kind=trace", "arrival.path=t.csv", "arrival.rate=300"], "arrival.time_scale"),
        (["arrival.kind=closed", "arrival.rate=100,200"], "arrival.think_s"),  # a sweep's values too
        (["arrival.kind=poisson,closed", "arrival.rate=100"], "arrival.think_s"),
    ],
)
def test_explicit_rate_for_a_kind_that_ignores_it_is_refused(in_tmp: Path, overrides: list[str], names: str) -> None:
    write(in_tmp / "t.csv", "arrival_s\n0.1\n")
    error = refused(overrides)
    assert error.key == "arrival.rate" and "ignores arrival.rate" in str(error) and names in str(error)


def test_rate_from_a_preset_or_the_default_is_not_explicit() -> None:
    preflight(["arrival.kind=closed"])
    preflight(["scenario=quickstart", "arrival.kind=bursty"])  # quickstart sets arrival.rate, the user did not
    preflight(["arrival.kind=diurnal", "arrival.rate=300"])  # diurnal reads it


# --- 8. memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "overrides, key",
    [
        (["arrival.rate=1e9"], "arrival.rate"),
        (["duration_s=1e9", "arrival.rate=0.001", "timeseries_window_s=1"], "duration_s"),  # auto would be 1e6 s
        (["arrival.kind=bursty", "arrival.high_rate=1e9"], "arrival.high_rate"),
        (["arrival.kind=diurnal", "arrival.rate=5e8", "arrival.amplitude=1"], "arrival.rate"),
        (["arrival.kind=closed", "arrival.users=100000000", "arrival.think_s=0.001"], "arrival.users"),
        (["-m", "arrival.rate=100,1e9"], "arrival.rate"),
    ],
)
def test_run_that_cannot_fit_in_memory_is_refused(overrides: list[str], key: str) -> None:
    error = refused([o for o in overrides if o != "-m"])
    assert error.key == key and "more than the limit" in str(error) and "duration_s" in str(error)


def test_memory_estimate_uses_the_measured_costs() -> None:
    cfg = ServelabConfig(duration_s=100.0, window_s=1.0)
    cfg.arrival.rate = 1000.0
    need = 1000 * 100 * BYTES_PER_REQUEST + 100 * BYTES_PER_WINDOW
    check_memory(cfg, available=2 * need)  # exactly at half of what is available: fits
    with pytest.raises(ConfigError, match="arrival.rate"):
        check_memory(cfg, available=2 * need - 2)


def test_memory_of_a_trace_is_its_rows(in_tmp: Path) -> None:
    cfg = ServelabConfig()
    cfg.arrival.kind = "trace"
    with pytest.raises(ConfigError) as info:
        check_memory(cfg, trace_rows=10**6, available=10**6 * BYTES_PER_REQUEST)
    assert info.value.key == "arrival.path"


# --- 9. paths ------------------------------------------------------------------------------------

def test_relative_paths_become_absolute_at_the_entry(in_tmp: Path) -> None:
    write(in_tmp / "t.csv", "arrival_s\n0.1\n")
    write(in_tmp / "p.json", GOOD_PROFILE)
    cfg = preflight(["out_dir=runs/a", "arrival.kind=trace", "arrival.path=t.csv", "service.kind=empirical",
                     "service.profile=p.json", "overhead.profile=./p.json"])
    assert cfg.out_dir == str(in_tmp / "runs" / "a")
    assert cfg.arrival.path == str(in_tmp / "t.csv")
    assert cfg.service.profile == cfg.overhead.profile == str(in_tmp / "p.json")


# --- 10, 11. every key documented: --help and README, from one source ----------------------------

def test_every_schema_key_has_help() -> None:
    missing = [k.key for k in KEYS if not k.help.strip()]
    assert not missing, f"give these keys a help text (setting(default, help)): {missing}"


def test_readme_key_table_is_generated_from_the_schema() -> None:
    text = README.read_text()
    block = re.search(r"<!-- config-keys:[^\n]*-->\n(.*?)\n<!-- /config-keys -->", text, re.S)
    assert block, "README's Configuration section lost its config-keys markers"
    assert block.group(1) == markdown_table(), "README's key table is stale: .venv/bin/python -m scenarios.config"
    documented = set(re.findall(r"^\| `([^`]+)` \|", block.group(1), re.M))
    assert documented == {k.key for k in KEYS}
