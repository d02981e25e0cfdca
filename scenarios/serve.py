"""`servelab mode=serve gateway.port=PORT`: keep the real stack up for the user's own tools.

Prints where everything is, then waits for Ctrl-C or SIGTERM. If a process of the stack dies
meanwhile the command says which and exits non-zero, rather than leaving a half stack up.

There is no load here to start a run's clock, so time 0 is when the stack is ready: every
replica is told it then (`real.controller.TimeZeroTeller`, as mode=real does at the load's
time 0), and the versions' `error_rate` and `faults` schedule count from it. A user's tool that
wants another time 0 tells each replica itself (`POST /v2/fault {"t0_unix": T}`, with the token).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

from real.controller import ControlError, TimeZeroTeller
from real.launcher import LaunchError, RunningStack, absolute, launch
from scenarios.outputs import write_config
from scenarios.run_real import failed
from sim.config import ConfigError, version_names
from sim.policy.membership import Membership

EXIT_STACK_DIED = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    """Stop once: a second Ctrl-C must not cut the stack's shutdown short (it takes seconds at
    most, and the children die with this process anyway)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM both stop the stack, whatever this process inherited: started in the
    background by a shell script, it inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler of its own."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_the_clock(stack: RunningStack) -> float:
    """Tell every replica that time 0 is now; the wall time told. A replica that refuses it is
    a warning on stderr (its versions then fail nothing and follow no fault schedule)."""
    teller = TimeZeroTeller(stack.gateway_url, stack.token, t0_unix=time.time())
    asyncio.run(teller.run())
    for note in teller.notes:
        print(f"servelab: warning: {note}", file=sys.stderr, flush=True)
    assert teller.t0_unix is not None
    return teller.t0_unix


def banner(stack: Any, cfg: Any, t0_unix: float | None = None) -> str:
    token_file = stack.run_dir / "stack" / "token" if stack.run_dir else None
    model = cfg.model.name
    versions = version_names(cfg.model)
    membership = Membership.from_config(cfg)
    auth = f"-H \"Authorization: Bearer $(cat {token_file})\""
    n_inputs = 64
    example = (
        f"curl -s -X POST {stack.gateway_url}/v2/models/{model}/infer -H 'content-type: application/json' "
        f"-H 'x-user-id: 42' -d '{{\"inputs\": [{{\"name\": \"input\", \"shape\": [1, {n_inputs}], "
        f"\"datatype\": \"FP32\", \"data\": [{', '.join(['0.0'] * n_inputs)}]}}]}}'"
    )
    lines = [
        f"servelab: stack up: {cfg.replicas} replica(s) of {model!r} versions {versions}, lb.policy={cfg.lb.policy}",
        f"  gateway   {stack.gateway_url}   (metrics: {stack.gateway_url}/metrics)",
    ]
    for r, url in enumerate(stack.replica_urls):
        lines.append(f"  replica {r} {url}   (version {membership.version_name(r)})")
    lines += [
        "  infer example:",
        f"    {example}",
        f"  versioned:  POST {stack.gateway_url}/v2/models/{model}/versions/{versions[0]}/infer",
        f"  state (membership, weights, per-version window): GET {stack.gateway_url}/v2/gateway/state",
        f"  token for control endpoints (Authorization: Bearer ...): in {token_file}" if token_file else "",
        f"    e.g. curl -X POST {stack.gateway_url}/v2/gateway/weights {auth} "
        f"-d '{{\"weights\": {[1.0] * len(versions)}}}'" if token_file else "",
        f"         curl -X POST {stack.gateway_url}/v2/gateway/replicas/0 {auth} -d '{{\"action\": \"drain\"}}'"
        if token_file else "",
        f"  time 0: {time.strftime('%H:%M:%S', time.localtime(t0_unix))} (the versions' error_rate and faults count from it; "
        f"t0_unix {t0_unix:.3f})" if t0_unix is not None else "",
        f"  logs: {stack.run_dir / 'stack'}" if stack.run_dir else "",
        "  Ctrl-C or SIGTERM stops everything.",
    ]
    return "\n".join(line for line in lines if line)


def run(cfg: Any, out_dir: Path) -> int:
    out_dir = absolute(out_dir)  # the banner's paths must work from any directory
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir / "config.yaml", cfg)
    try:
        with _stop_on_signals(), launch(cfg, run_dir=out_dir) as stack:
            print(banner(stack, cfg, start_the_clock(stack)), flush=True)
            while True:
                for name, proc, log in zip(
                    [f"replica {r}" for r in range(len(stack.replica_urls))] + ["gateway"], stack.processes, stack.logs
                ):
                    if proc.poll() is not None:
                        print(f"servelab: {name} exited with status {proc.returncode}; see {log}. Stopping.", file=sys.stderr)
                        return EXIT_STACK_DIED
                time.sleep(0.5)
    except _Stop:  # raised by the handlers above, inside the stack's context: it is stopped by now
        print("servelab: stopping the stack", file=sys.stderr, flush=True)
    except (ConfigError, LaunchError, ControlError) as exc:
        return failed("serve", exc)
    print("servelab: stack stopped", flush=True)
    return 0
