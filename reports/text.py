"""Plain-text renderings of a run's summary, for the terminal and Markdown reports."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.2f} ms"


def format_summary(summary: dict[str, Any], title: str = "run") -> str:
    lat = summary["latency_s"]
    counts = summary["status_counts"]
    batch = summary.get("mean_batch_size")
    lines = [
        f"{title}: {summary['requests_total']} requests "
        f"({summary['requests_measured']} measured over {summary['window_s']:.1f} s after warm-up)",
        f"  rate      offered {summary['offered_rate']:.1f} req/s, achieved {summary['achieved_rate']:.1f} req/s",
        f"  latency   p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}, mean {_ms(lat['mean'])}",
        f"  outcomes  ok {counts['ok']}, shed {counts['shed']} ({summary['shed_fraction']:.1%}), "
        f"timeout {counts['timeout']}, error {counts['error']}",
        f"  batching  mean batch size {'-' if batch is None else f'{batch:.2f}'}",
    ]
    for note in summary.get("warnings", []):
        lines.append(f"  WARNING   {note}")
    return "\n".join(lines)
