"""Benchmark: what does the load generator cost, and does it measure the real stack honestly?

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m scenarios.bench_loadgen            # everything, ~8 min
    .venv/bin/python -m scenarios.bench_loadgen --only null,stack1                 # the issue-11 rows, ~3 min

Sections (`--only` picks some; every figure is measured in the same run):
grpcnull the same own cost with loadgen.protocol=http and =grpc, one after the other (the
         gRPC null server: `null_server --grpc`).
grpcstack the same two protocols through the gateway and one emulated replica (as stack1) at
         --grpc-rate: the CPU per request of the generator, the gateway and the replica over each.
null     the generator's own cost: against the null server (real.loadgen.null_server, a server
         that does nothing) at a low rate, what it measures is its own share of every latency
         (p50, p99), beside a bare loopback round trip to the same server (the floor); with
         loadgen.spin_s at its default and at --other-spin (0: never spin); its CPU per request;
         and the rates it sustains alone.
overhead the stack with ~0 device time at a low rate; its latency p50 is the stack's own cost
         per request (client, loopback, gateway, server).
main     open loop at --rate req/s Poisson (mode=real's `measure`) against the emulated backend with
         a fixed 10 ms device time (2 replicas x 16 instances, so nothing queues): achieved send
         rate within 1% of offered, send lag p99 < 2 ms, latency p50 within 1 ms of 10 ms + overhead.
reference the same stack and rate driven by stock Locust `constant_throughput` users: its achieved
         rate, the spread of its inter-send gaps (a Poisson process has CV 1), and its latency
         (from the actual send, as Locust measures).
dispatch one dispatcher greenlet vs a timer per request, at the same rate.
sweep    the rate up to which this machine measures honestly through 2 replicas (10 ms device).
stack1   the same through the gateway and ONE emulated replica whose device is not the limit
         (1 ms per batch, dynamic batching up to 8 within 1 ms, 2 instances): the highest honest
         rate, with the CPU (cores) each process used.
Honest = achieved send rate within 1% of offered and send lag p99 <= 2 ms. `--locustfile` runs
the same measurements with another generator (e.g. an earlier version of locustfile.py) for a
before/after comparison. Prints one table; a figure that fails its target is marked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import real.loadgen.runner as loadgen_runner
from real.cpu import ROLES, CpuSampler
from real.launcher import launch, stop_all
from real.loadgen.merge import send_lag_summary
from real.loadgen.null_server import null_server
from real.loadgen.runner import LOCUSTFILE, run_load, spawn
from scenarios.run_real import measure
from sim.config import ArrivalConfig, BatchingConfig, LoadgenConfig, ScenarioConfig, ServiceConfig

REFERENCE = LOCUSTFILE.with_name("reference_locustfile.py")
LAG_P99_TARGET_S = 0.002
RATE_TOLERANCE = 0.01
P50_TOLERANCE_S = 0.001


SECTIONS = ("null", "grpcnull", "grpcstack", "overhead", "main", "reference", "dispatch", "sweep", "stack1")
OWN_P50_TARGET_S = 0.0005  # the generator's own share of a latency, at p50
STACK1_TARGET_RATE = 2000.0  # honest through the gateway and one replica
INFER_PATH = "/v2/models/digits/infer"


@dataclass
class Row:
    name: str
    offered: float
    sent: float
    lag_p50: float | None
    lag_p99: float | None
    lat_p50: float | None
    lat_p99: float | None
    note: str = ""
    cpu: dict[str, float] = field(default_factory=dict)  # cores each role used over the measured window

    def honest(self, lag_limit: float) -> bool:
        return (self.lag_p99 is not None and self.lag_p99 <= lag_limit
                and abs(self.sent / self.offered - 1) <= RATE_TOLERANCE)


def stack_cfg(rate: float, duration_s: float, *, device_s: float = 0.010, dispatch: str = "dispatcher",
              concurrency: int = 16, seed: int = 1, replicas: int = 2, max_batch: int = 1,
              delay_s: float = 0.0, protocol: str = "http") -> ScenarioConfig:
    return ScenarioConfig(
        seed=seed, duration_s=duration_s, warmup_s=min(2.0, duration_s / 5), replicas=replicas, concurrency=concurrency,
        timeout_s=2.0,
        arrival=ArrivalConfig(kind="poisson", rate=rate, users=1000),
        service=ServiceConfig(kind="deterministic", base_s=device_s, per_item_s=0.0),
        batching=BatchingConfig(max_batch_size=max_batch, max_queue_delay_s=delay_s),
        loadgen=LoadgenConfig(workers=1, max_lag_p99_s=LAG_P99_TARGET_S, dispatch=dispatch, protocol=protocol),
    )


def stack1_cfg(rate: float, duration_s: float, seed: int, protocol: str = "http") -> ScenarioConfig:
    """Gateway + one emulated replica that is not the limit: 1 ms per batch, batches of up to 8
    formed within 1 ms, 2 instances (capacity 16,000 req/s); what binds is the host's CPU."""
    return stack_cfg(rate, duration_s, device_s=0.001, concurrency=2, seed=seed, replicas=1, max_batch=8, delay_s=0.001,
                     protocol=protocol)


def per_request_cpu(row: Row) -> str:
    """µs of CPU per request sent, by role (the cores each used over the window / the rate)."""
    return " ".join(f"{role} {cores / row.sent * 1e6:.0f}" for role, cores in row.cpu.items()) if row.sent else ""


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_").replace("=", "-")


def _t0_wall(loadgen_dir: Path) -> float | None:
    try:
        return float(json.loads((loadgen_dir / "started-0.json").read_text())["t0_wall"])
    except (OSError, ValueError, KeyError):
        return None


def _cores(sampler: CpuSampler, t0: float | None, start_s: float, end_s: float) -> dict[str, float]:
    """Cores each role used over [t0 + start_s, t0 + end_s] (wall clock): the measured window."""
    if t0 is None or end_s <= start_s:
        return {}
    used = sampler.trace.between(t0 + start_s, t0 + end_s)
    return {role: used[role] / (end_s - start_s) for role in ROLES if sampler.trace.processes(role)}


def run_open(name: str, cfg: ScenarioConfig, base: Path) -> tuple[Row, dict[str, Any]]:
    out = base / _slug(name)
    with ContentionMonitor() as monitor, CpuSampler(0.2) as sampler:
        frame, summary, _ = measure(cfg, out)
    contended = bool(monitor.seen)
    lag, lat = summary["send_lag_s"], summary["latency_s"]
    ok = frame[(frame["status"] == "ok") & (frame["arrival_s"] >= cfg.warmup_s)]
    outside = (ok["latency_s"] - ok["service_s"] - ok["queue_s"]).to_numpy(dtype=float)
    summary["outside_p50_s"] = float(np.median(outside)) if len(outside) else None
    counts = summary["status_counts"]
    note = "" if counts["ok"] == summary["requests_measured"] else f"not ok: {summary['requests_measured'] - counts['ok']}"
    if contended:
        note += " CONTENDED (another stack/Locust ran)"
    cpu = _cores(sampler, _t0_wall(out / "loadgen"), cfg.warmup_s, cfg.duration_s)
    return Row(name, summary["offered_rate"], summary["achieved_send_rate"], lag["p50"], lag["p99"],
               lat["p50"], lat["p99"], note, cpu), summary


def null_cfg(rate: float, duration_s: float, seed: int, spin_s: float = LoadgenConfig().spin_s,
             protocol: str = "http") -> ScenarioConfig:
    return ScenarioConfig(seed=seed, duration_s=duration_s, warmup_s=min(1.0, duration_s / 5), timeout_s=2.0,
                          arrival=ArrivalConfig(kind="poisson", rate=rate, users=1000),
                          loadgen=LoadgenConfig(workers=1, max_lag_p99_s=LAG_P99_TARGET_S, spin_s=spin_s, protocol=protocol))


def run_null(name: str, cfg: ScenarioConfig, base: Path) -> Row:
    """The generator alone: open loop against the null server. Its latency is its own cost."""
    out = base / _slug(name)
    with ContentionMonitor() as monitor, CpuSampler(0.2) as sampler, null_server(log=None, protocol=cfg.loadgen.protocol) as url:
        result = run_load(cfg, url, out / "loadgen", path=INFER_PATH)
    frame, sends = result.merged.requests, result.merged.sends
    lag = send_lag_summary(sends, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s)
    measured = frame[frame["arrival_s"] >= cfg.warmup_s]
    ok = measured[measured["status"] == "ok"]["latency_s"].to_numpy(dtype=float)
    cpu = _cores(sampler, result.t0_wall, cfg.warmup_s, cfg.duration_s)
    note = "" if len(ok) == len(measured) else f"not ok: {len(measured) - len(ok)}"
    if cpu.get("loadgen") and lag["achieved_send_rate"]:
        note += f" {cpu['loadgen'] / lag['achieved_send_rate'] * 1e6:.0f} µs CPU/request"
    if monitor.seen:
        note += " CONTENDED (another stack/Locust ran)"
    p50 = float(np.median(ok)) if len(ok) else None
    p99 = float(np.percentile(ok, 99)) if len(ok) else None
    return Row(name, cfg.arrival.rate, lag["achieved_send_rate"], lag["send_lag_s"]["p50"], lag["send_lag_s"]["p99"],
               p50, p99, note.strip(), cpu)


def loopback_round_trip(url: str, requests: int = 3000, warmup: int = 300) -> tuple[float, float]:
    """p50, p99 of a bare round trip to `url`'s infer (one blocking socket, the request's bytes
    built once): the floor under anything a Python client on this box measures."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    body = b'{"id":"0","inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[0]}]}'
    request = (f"POST {INFER_PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    times = []
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for k in range(requests + warmup):
            t = time.perf_counter()
            sock.sendall(request)
            buf = b""
            while True:
                buf += sock.recv(65536)
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if sep and len(rest) >= int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
                    break
            if k >= warmup:
                times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.percentile(times, 99))


def run_reference(cfg: ScenarioConfig, base: Path, users: int) -> Row:
    """Stock Locust on the same stack: constant_throughput users, latency from the actual send."""
    out = base / "reference"
    out.mkdir(parents=True, exist_ok=True)
    starts_file = out / "starts.npy"
    with launch(cfg, run_dir=out) as stack:
        argv = [sys.executable, "-m", "locust", "-f", str(REFERENCE), "--headless", "--only-summary",
                "--loglevel", "WARNING", "-u", str(users), "-r", str(users), "-t", f"{cfg.duration_s:g}s",
                "--host", stack.gateway_url, "--stop-timeout", "3"]
        env = {"SERVELAB_REF_RATE_PER_USER": str(cfg.arrival.rate / users), "SERVELAB_REF_OUT": str(starts_file),
               "SERVELAB_REF_PATH": f"/v2/models/{cfg.model.name}/infer"}
        proc = spawn("locust-reference", argv, env, out / "locust-reference.log")
        try:
            proc.popen.wait(timeout=cfg.duration_s + 60)
        finally:
            stop_all([proc.popen])
    data = np.load(starts_file)
    starts, latency = data[:, 0], data[:, 1]
    t0 = starts.min()
    keep = (starts >= t0 + cfg.warmup_s + 1.0) & (starts < t0 + cfg.duration_s - 0.5)  # skip the ramp and the stop
    window = cfg.duration_s - cfg.warmup_s - 1.5
    gaps = np.diff(np.sort(starts[keep]))
    cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 else float("nan")
    return Row(f"locust constant_throughput x{users}", cfg.arrival.rate, keep.sum() / window, None, None,
               float(np.median(latency[keep])), float(np.percentile(latency[keep], 99)),
               f"inter-send CV {cv:.2f} (Poisson 1.00)")


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:7.2f}"


def fmt_cpu(cpu: dict[str, float]) -> str:
    return " ".join(f"{role[0]}{v:.2f}" for role, v in cpu.items()) or "-"


def table(rows: list[Row]) -> str:
    head = (f"{'run':<36} {'offered':>8} {'sent/s':>8} {'rate':>7} {'lag p50':>8} {'lag p99':>8} {'lat p50':>8} "
            f"{'lat p99':>8} {'cores l/g/r':>15}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name:<36} {r.offered:8.1f} {r.sent:8.1f} {r.sent / r.offered - 1:+7.2%} {fmt_ms(r.lag_p50):>8} "
                     f"{fmt_ms(r.lag_p99):>8} {fmt_ms(r.lat_p50):>8} {fmt_ms(r.lat_p99):>8} {fmt_cpu(r.cpu):>15}  {r.note}")
    return "\n".join(lines) + ("\n(times in ms; cores: CPU the load generator (l), gateway (g), replicas (r) used "
                               "over the measured window)")


KEYWORDS = ("real.server", "real.gateway", "locust", "servelab mode", "pytest", "scenarios.bench")


def _ancestry(pid: int) -> set[int]:
    """This process and its parents (a `timeout` wrapper's command line names the bench too)."""
    chain = set()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return chain


def _parent(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def busy_elsewhere() -> list[str]:
    """Other servelab stacks, Locust runs or test sessions on this box (not ours): they take the
    same 2 cores, and the figures would measure the contention, not the generator."""
    mine = _ancestry(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(k in cmd for k in KEYWORDS) and not _descends(int(entry.name), os.getpid()):
            found.append(f"{entry.name}: {cmd[:100]}")
    return found


def _descends(pid: int, root: int) -> bool:
    seen = 0
    while pid > 1 and seen < 64:
        if pid == root:
            return True
        pid = _parent(str(pid))
        seen += 1
    return False


class ContentionMonitor:
    """Polls for foreign stacks/Locust/pytest while a run measures (they come and go in seconds)."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(period_s,), daemon=True)

    def _poll(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self.seen.extend(busy_elsewhere())

    def __enter__(self) -> "ContentionMonitor":
        self.seen.extend(busy_elsewhere())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def honest_up_to(rates: list[float], rows: list[Row]) -> float | None:
    """The highest nominal rate such that it and every lower one measured honestly."""
    up_to = None
    for rate, row in sorted(zip(rates, rows), key=lambda x: x[0]):
        if not row.honest(LAG_P99_TARGET_S):
            break
        up_to = rate
    return up_to


@contextlib.contextmanager
def generator(locustfile: Path | None) -> Iterator[None]:
    """Run every load with `locustfile` instead of servelab's own (a before/after comparison)."""
    if locustfile is None:
        yield
        return
    defaults = loadgen_runner.run_load.__kwdefaults__
    assert defaults is not None
    saved = defaults["locustfile"]
    defaults["locustfile"] = locustfile.resolve()
    try:
        yield
    finally:
        defaults["locustfile"] = saved


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, comma-separated: {','.join(SECTIONS)}")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of the main run and the reference")
    p.add_argument("--sweep", default="250,500,1000,1500,2000,2500", help="rates for the honesty sweep ('' = skip)")
    p.add_argument("--sweep-duration", type=float, default=10.0)
    p.add_argument("--null-rate", type=float, default=100.0, help="the low rate of the generator's own cost")
    p.add_argument("--null-duration", type=float, default=10.0)
    p.add_argument("--other-spin", type=float, default=0.0,
                   help="loadgen.spin_s of the second own-cost row (the default's: skip)")
    p.add_argument("--null-sweep", default="2000,4000,6000", help="rates the generator alone is driven at ('' = skip)")
    p.add_argument("--stack1-sweep", default="1500,2000,2250,2500", help="rates through gateway + one replica")
    p.add_argument("--stack1-duration", type=float, default=10.0)
    p.add_argument("--grpc-rate", type=float, default=1000.0, help="the rate of the grpcstack rows")
    p.add_argument("--reference-users", type=int, default=50)
    p.add_argument("--locustfile", type=Path, default=None, help="measure another generator's locustfile instead")
    p.add_argument("--out", default="", help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = args.only - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base = Path(args.out or tempfile.mkdtemp(prefix="servelab-bench-loadgen-"))
    rows: list[Row] = []
    started = time.perf_counter()
    others = busy_elsewhere()
    load1 = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load1:.2f}; generator nice {LoadgenConfig().nice} "
          f"(loadgen.nice), {args.locustfile or LOCUSTFILE}")
    for line in others:
        print(f"  WARNING: another servelab/Locust process is running, figures will include its contention: {line}")
    verdicts: list[tuple[str, bool | None]] = []
    with generator(args.locustfile):
        if "null" in args.only:
            own, alone = null_section(args, base)
            rows.extend(own + alone)
            verdicts.append((f"generator's own p50 at {args.null_rate:g} req/s <= {OWN_P50_TARGET_S * 1e3:g} ms",
                             own[0].lat_p50 is not None and own[0].lat_p50 <= OWN_P50_TARGET_S))
        if "grpcnull" in args.only:  # loadgen.protocol=grpc's own cost, beside HTTP's at the same rate
            for protocol in ("http", "grpc"):
                print(f"[grpcnull] own cost over {protocol}: {args.null_rate:g} req/s against the null server ...", flush=True)
                rows.append(run_null(f"own cost {protocol} {args.null_rate:g}/s",
                                     null_cfg(args.null_rate, args.null_duration, 40, protocol=protocol), base))
        if "grpcstack" in args.only:  # both protocols through the stack: what each costs every process
            for protocol in ("http", "grpc"):
                print(f"[grpcstack] {protocol} through gateway + 1 replica: {args.grpc_rate:g} req/s for "
                      f"{args.stack1_duration:g} s ...", flush=True)
                row, _ = run_open(f"{protocol} gateway+1 replica {args.grpc_rate:g}/s",
                                  stack1_cfg(args.grpc_rate, args.stack1_duration, seed=30, protocol=protocol), base)
                row.note = f"µs CPU/request: {per_request_cpu(row)} {row.note}".strip()
                rows.append(row)
        overhead = None
        if "overhead" in args.only or "main" in args.only:
            print("[overhead] ~0 device time, 100 req/s for 10 s ...", flush=True)
            over_row, over = run_open("overhead (device ~0, 100/s)", stack_cfg(100.0, 10.0, device_s=1e-6), base)
            rows.append(over_row)
            overhead = over["latency_s"]["p50"]
        if "main" in args.only:
            print(f"[main] open loop: {args.rate:g} req/s Poisson, 10 ms device, {args.duration:g} s ...", flush=True)
            main_row, main_summary = run_open(f"servelab open loop {args.rate:g}/s", stack_cfg(args.rate, args.duration), base)
            rows.append(main_row)
            assert overhead is not None
            target = 0.010 + overhead
            verdicts += [
                (f"achieved send rate within 1% of {args.rate:g}", abs(main_row.sent / main_row.offered - 1) <= RATE_TOLERANCE),
                ("send lag p99 < 2 ms", main_row.lag_p99 is not None and main_row.lag_p99 < LAG_P99_TARGET_S),
                (f"latency p50 within 1 ms of 10 ms + overhead ({target * 1e3:.2f} ms)",
                 main_row.lat_p50 is not None and abs(main_row.lat_p50 - target) <= P50_TOLERANCE_S),
            ]
            print(f"stack overhead p50 (device ~0, 100/s): {overhead * 1e3:.2f} ms; at {args.rate:g}/s the time outside "
                  f"queue and device is p50 {main_summary['outside_p50_s'] * 1e3:.2f} ms", flush=True)
        if "reference" in args.only:
            print(f"[reference] stock Locust constant_throughput, {args.reference_users} users ...", flush=True)
            rows.append(run_reference(stack_cfg(args.rate, args.duration), base, args.reference_users))
        if "dispatch" in args.only:
            print("[dispatch] dispatcher greenlet vs a timer per request ...", flush=True)
            for mode in ("dispatcher", "timers"):
                cfg = stack_cfg(args.rate, args.sweep_duration, dispatch=mode, seed=2)
                row, _ = run_open(f"dispatch={mode} {args.rate:g}/s", cfg, base)
                rows.append(row)
        if "sweep" in args.only:
            sweep_rows = []
            rates = [float(x) for x in args.sweep.split(",") if x.strip()]
            for k, rate in enumerate(rates):
                print(f"[sweep] {k + 1}/{len(rates)}: {rate:g} req/s for {args.sweep_duration:g} s ...", flush=True)
                row, _ = run_open(f"sweep {rate:g}/s", stack_cfg(rate, args.sweep_duration, concurrency=32, seed=3 + k), base)
                sweep_rows.append(row)
            rows.extend(sweep_rows)
            up_to = honest_up_to(rates, sweep_rows)
            print(f"sweep (2 replicas, 10 ms device) honest up to: {'-' if up_to is None else f'{up_to:.0f} req/s'}")
        if "stack1" in args.only:
            stack1_rows = []
            rates = [float(x) for x in args.stack1_sweep.split(",") if x.strip()]
            for k, rate in enumerate(rates):
                print(f"[stack1] {k + 1}/{len(rates)}: gateway + 1 replica, {rate:g} req/s for "
                      f"{args.stack1_duration:g} s ...", flush=True)
                row, _ = run_open(f"gateway+1 replica {rate:g}/s", stack1_cfg(rate, args.stack1_duration, seed=20 + k), base)
                stack1_rows.append(row)
            rows.extend(stack1_rows)
            up_to = honest_up_to(rates, stack1_rows)
            verdicts.append((f"honest through gateway + one replica up to >= {STACK1_TARGET_RATE:g} req/s "
                             f"(measured: {'-' if up_to is None else f'{up_to:.0f}'})",
                             up_to is not None and up_to >= STACK1_TARGET_RATE))

    print()
    print(table(rows))
    for what, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    if any("CONTENDED" in r.note for r in rows):
        print("  WARNING: other servelab/Locust/pytest processes ran during rows marked CONTENDED; rerun on a quiet machine")
    print(f"runs in {base}; bench took {time.perf_counter() - started:.0f} s")
    (base / "bench.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))


def null_section(args: argparse.Namespace, base: Path) -> tuple[list[Row], list[Row]]:
    """The generator's own cost at a low rate (default spin, then the other), on the same
    schedule, and the rates it sustains alone."""
    with null_server() as url:
        rtt_p50, rtt_p99 = loopback_round_trip(url)
    print(f"[null] loopback round trip to the null server (one blocking socket): p50 {rtt_p50 * 1e3:.3f} ms, "
          f"p99 {rtt_p99 * 1e3:.3f} ms", flush=True)
    default = LoadgenConfig().spin_s
    spins = [default] + ([args.other_spin] if args.other_spin != default else [])
    own = []
    for k, spin in enumerate(spins):  # the first is the default settings: the verdict reads it
        print(f"[null] own cost: {args.null_rate:g} req/s against the null server, loadgen.spin_s={spin:g}, "
              f"{args.null_duration:g} s ...", flush=True)
        cfg = null_cfg(args.null_rate, args.null_duration, 40, spin)
        own.append(run_null(f"own cost {args.null_rate:g}/s spin_s={spin:g}", cfg, base))
    own.append(Row("loopback round trip (floor)", 1.0, 1.0, None, None, rtt_p50, rtt_p99, "bare socket, no generator"))
    alone = []
    for k, rate in enumerate(float(x) for x in args.null_sweep.split(",") if x.strip()):
        print(f"[null] the generator alone at {rate:g} req/s ...", flush=True)
        alone.append(run_null(f"generator alone {rate:g}/s", null_cfg(rate, 8.0, 50 + k), base))
    return own, alone
if __name__ == "__main__":
    main()
