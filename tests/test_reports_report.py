"""reports.report: the HTML stands alone, the Markdown's links resolve, warnings come first."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from reports.compare import METRICS, compare_summaries
from reports.report import write_report, write_run_report
from tests.test_reports_support import PNG_SIGNATURE, load_points, twin_runs


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
