"""Plain-text renderings of a run's summary, for the terminal and Markdown reports."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.2f} ms"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_rates(summary: dict[str, Any]) -> str:
    """Offered rate against throughput, with the capacity beside them when known, so an
    overloaded run reads as such: throughput at capacity, far below what was offered."""
    text = (f"offered {summary['offered_rate']:.1f} req/s, throughput {summary['throughput']:.1f} req/s "
            f"(completions in the window)")
    capacity = summary.get("capacity_rps")
    if capacity:
        text += f"; capacity {capacity:.1f} req/s, offered load {summary['offered_load']:.0%}"
    return text


def format_summary(summary: dict[str, Any], title: str = "run") -> str:
    lat = summary["latency_s"]
    counts = summary["status_counts"]
    utilisation = summary.get("utilisation_mean")
    lines = [
        f"{title}: {summary['requests_total']} requests "
        f"({summary['requests_measured']} measured over {summary['window_s']:.1f} s after warm-up)",
        f"  rate      {format_rates(summary)}",
        f"  latency   p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}, mean {_ms(lat['mean'])}",
        f"  outcomes  ok {counts['ok']}, shed {counts['shed']} ({summary['shed_fraction']:.1%}), "
        f"timeout {counts['timeout']}, error {counts['error']}",
        f"  batching  {summary.get('batches', 0)} batches, size mean per batch "
        f"{_num(summary.get('batch_size_mean_per_batch'))}, per request {_num(summary.get('batch_size_mean_per_request'))}; "
        f"utilisation {'-' if utilisation is None else f'{utilisation:.0%}'}",
    ]
    if "async" in summary:  # pattern=async: submit -> ready on the server, and what polling added
        a = summary["async"]
        lines.append(f"  async     {a['accepted']} accepted, {a['refused']} refused; ready p50 {_ms(a['ready_latency_s']['p50'])}, "
                     f"p99 {_ms(a['ready_latency_s']['p99'])}; polls per request {_num(a['polls_per_request'])}, "
                     f"adding {_ms(a['poll_overhead_s_mean'])} on average")
    if summary.get("features"):  # the feature store: the replicas' caches and the lookups (sim.records.feature_figures)
        f = summary["features"]
        predicted = f.get("predicted_hit_ratio")
        lines.append(f"  features  hit ratio {_num(f['hit_ratio'], '.3f')}" + ("" if predicted is None else f" (predicted {predicted:.3f})")
                     + f", {f['misses']} misses, {f['fallbacks']} fallbacks; lookup per batch p50 "
                     f"{_ms(f['lookup_s']['p50'])}, p99 {_ms(f['lookup_s']['p99'])}")
    if "shadow_dropped" in summary:
        lines.append(f"  shadow    {summary['shadow_dropped']} copies dropped (over gateway.shadow_max_in_flight, "
                     "or no replica of the shadow version routable)")
    for note in summary.get("warnings", []):
        lines.append(f"  WARNING   {note}")
    return "\n".join(lines)
