"""reports.report: the HTML stands alone, the Markdown's links resolve, warnings come first."""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path

import pytest

from reports.compare import METRICS, compare_summaries
from reports.report import write_report, write_run_report
from scenarios import run_sim
from scenarios.config import ServelabConfig
from tests.test_reports_support import PNG_SIGNATURE, load_points, tiny, twin_runs


def test_compare_report(tmp_path: Path) -> None:
    sim, real = twin_runs(tmp_path)
    real.summary["warnings"] = ["send lag p99 7.1 ms exceeds loadgen.max_lag_p99_s: not a valid run"]
    real.summary["valid"] = False
    comparison = compare_summaries(sim.summary, real.summary)
    html_path, md_path = write_report(tmp_path / "report", comparison=comparison, sim_run=sim, real_run=real,
                                      load_curve=load_points(), title="tiny compare")
    html = html_path.read_text()
    # self-contained: three embedded PNGs, no link to a file beside it
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3
    assert all(base64.b64decode(b)[:8] == PNG_SIGNATURE for b in images)
    assert 'src="figures/' not in html
    assert "<title>tiny compare</title>" in html and 'id="fidelity"' in html
    for m in METRICS:
        assert f"<td>{m.label}</td>" in html
    assert html.count('class="met"') + html.count('class="missed"') + html.count('class="nodata"') == 3
    # the invalid run and the differing seed are shown before the table
    warn_at = html.index('id="warnings"')
    assert warn_at < html.index('id="fidelity"')
    assert "not a valid run" in html and "different scenarios (seed)" in html
    assert "twin:lognormal" in html  # the backend is named

    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 3
    for link in links:
        target = md_path.parent / link
        assert not Path(link).is_absolute() and target.read_bytes()[:8] == PNG_SIGNATURE
    assert "| latency p99 |" in md and "not a valid run" in md
    assert md.index("Warnings") < md.index("## Fidelity")


def test_run_report(tmp_path: Path) -> None:
    sim, _ = twin_runs(tmp_path)
    html_path, md_path = write_run_report(tmp_path / "single", sim)
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 2
    assert 'id="fidelity"' not in html and 'id="warnings"' not in html
    assert "latency p99" in html and "arrival.rate" in html
    md = md_path.read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (md_path.parent / link).is_file()


def test_run_report_names_throughput_capacity_and_both_batch_means(tmp_path: Path) -> None:
    sim, _ = twin_runs(tmp_path)
    md = write_run_report(tmp_path / "single", sim)[1].read_text()
    for row in ("throughput (completions in window)", "capacity", "offered load (offered / capacity)",
                "batch size, mean per batch", "batch size, mean per request", "batches started in window"):
        assert f"| {row} |" in md, row
    assert "achieved" not in md and "mean_batch_size" not in md


def test_mode_sim_ends_with_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every run, not only compare, writes report.html and report.md with its figures and
    says where: the last lines name the report and the outputs."""
    base = tiny(0)
    cfg = ServelabConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, progress=False)
    assert run_sim.run(cfg, tmp_path / "run") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-3:] == [f"report: {tmp_path / 'run' / 'report.html'}", f"        {tmp_path / 'run' / 'report.md'}",
                        f"outputs: {tmp_path / 'run'}"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "throughput" in html
    assert {p.name for p in (tmp_path / "run" / "figures").iterdir()} == {"latency_cdf.png", "timeseries.png"}


# ---------------------------------------------------------------- which scenario keys are shown


def _config(**changes: object) -> dict[str, object]:
    """A run's config.yaml as the report reads it: the schema's defaults, some keys changed."""
    from sim.config import ScenarioConfig, to_plain

    config = to_plain(ScenarioConfig())
    for dotted, value in changes.items():
        *groups, last = dotted.split("__")
        node = config
        for g in groups:
            node = node[g]
        node[last] = value
    return config


def test_scenario_keys_come_from_the_schema() -> None:
    """Every key of the core groups; any other key once a run changes it; never an address or
    the token; a key one choice reads only with that choice."""
    from reports.report import CORE_GROUPS, NOT_SHOWN, READ_ONLY_WITH, SCENARIO_KEYS, config_rows, shown_keys
    from sim.config import ScenarioConfig, schema_help

    assert [k.key for k in SCENARIO_KEYS] == [k.key for k in schema_help(ScenarioConfig)]
    defaults = shown_keys([_config()])
    core = [k.key for k in SCENARIO_KEYS if k.key.rpartition(".")[0] in CORE_GROUPS
            and k.key not in READ_ONLY_WITH]
    assert [k for k in defaults if k not in READ_ONLY_WITH] == core
    assert "arrival.rate" in defaults and "service.cv" in defaults  # poisson, lognormal by default
    assert not {"arrival.high_rate", "arrival.think_s", "service.profile", "lb.weights"} & set(defaults)
    assert not {"gateway.hop_s", "loadgen.workers", "overhead.before_s"} & set(defaults)  # at their defaults

    changed = _config(gateway__hop_s=0.0002, loadgen__workers=2, server__token="s3cret", gateway__port=8000)
    rows = {key: (values, differs) for key, values, differs in config_rows([_config(), changed])}
    assert rows["gateway.hop_s"] == (["0", "0.0002"], True) and rows["loadgen.workers"] == (["1", "2"], True)
    assert not NOT_SHOWN & set(rows)  # the token never reaches a report

    bursty = shown_keys([_config(arrival__kind="bursty")])
    assert {"arrival.high_rate", "arrival.low_dwell_s"} <= set(bursty) and "arrival.rate" not in bursty


def test_every_schema_key_changed_is_shown_unless_named_hidden() -> None:
    """A key a later change adds to the schema reaches the report with no list to update."""
    from reports.report import NOT_SHOWN, READ_ONLY_WITH, SCENARIO_KEYS, shown_keys

    def other(value: object) -> object:
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value + 1
        if isinstance(value, str):
            return value + "x"
        return [*value, 1]

    everything = _config(**{k.key.replace(".", "__"): other(k.default) for k in SCENARIO_KEYS})
    expected = {k.key for k in SCENARIO_KEYS} - NOT_SHOWN - set(READ_ONLY_WITH)
    assert set(shown_keys([everything])) == expected
