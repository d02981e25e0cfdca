"""Seldon MLServer 1.7.1 as the server benchmark's outside reference, kept outside servelab.

    .venv/bin/python -m scenarios.mlserver_env [--home runs/mlserver]   # set it up (idempotent)

MLServer is installed with pip from PyPI into a virtual environment of its own
(`runs/mlserver/venv`, or `$SERVELAB_MLSERVER_HOME/venv`), never into servelab's, and servelab
never imports it: the benchmark only starts `mlserver start` as a process and talks to it over
loopback, like any client. Its sklearn runtime serves the digits task servelab's numpy backend
serves (version 1: a softmax over the 64 raw pixels, trained on the same split of scikit-learn's
bundled digits with the same settings, so both answer the same questions equally well). That
runtime loads a joblib file, and joblib is pickle: the model is trained and dumped by the MLServer
venv's own Python and only ever loaded by MLServer, the third-party server under test. servelab
itself never reads it (its own models are `.npz` arrays loaded with allow_pickle=False).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
HOME_ENV = "SERVELAB_MLSERVER_HOME"
REQUIREMENTS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1")
MODEL_NAME = "digits"
MODEL_VERSION = "1"
MODEL_FILE = "model.joblib"

# Runs inside the MLServer venv (its python, its scikit-learn): trains digits v1 exactly as
# real.models.digits._train_v1 does and dumps it for MLServer's sklearn runtime. servelab's model
# scales pixels by 1/16 before the matmul; dividing the coefficients by 16 folds that scaling into
# the model, so MLServer takes the same raw 0..16 pixels and gives the same probabilities.
_TRAIN = """
import json, sys
import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

out, seed, test_fraction, scale = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
x, y = load_digits(return_X_y=True)
x_tr, x_te, y_tr, y_te = train_test_split(
    x.astype(np.float32), y.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=y
)
clf = LogisticRegression(max_iter=2000, C=1.0).fit(x_tr * scale, y_tr)
clf.coef_ = clf.coef_ * scale
joblib.dump(clf, out)
print(json.dumps({"accuracy": float(clf.score(x_te, y_te))}))
"""


@dataclass(frozen=True)
class MLServerEnv:
    """Where MLServer lives: its venv and the model repository it serves."""

    home: Path

    @property
    def venv(self) -> Path:
        return self.home / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def mlserver(self) -> Path:
        return self.venv / "bin" / "mlserver"

    @property
    def repository(self) -> Path:
        """The folder `mlserver start` is given: settings.json, and one folder per model."""
        return self.home / "repository"

    @property
    def model_dir(self) -> Path:
        return self.repository / MODEL_NAME

    @property
    def _stamp(self) -> Path:
        return self.venv / ".servelab-installed"


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or ROOT / "runs" / "mlserver")


def ensure_venv(env: MLServerEnv, log: Callable[[str], None] = print) -> None:
    """Create the venv and pip-install REQUIREMENTS into it, unless a previous call already did
    (a stamp names what was installed; a change of pins reinstalls)."""
    want = "\n".join(REQUIREMENTS) + "\n"
    if env._stamp.is_file() and env._stamp.read_text() == want and env.mlserver.is_file():
        return
    if not env.python.is_file():
        log(f"mlserver: creating a virtual environment at {env.venv}")
        subprocess.run([sys.executable, "-m", "venv", str(env.venv)], check=True)
    log(f"mlserver: pip install {' '.join(REQUIREMENTS)} (into {env.venv}; a minute or two the first time)")
    subprocess.run([str(env.python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(env.python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    env._stamp.write_text(want)


def write_model(env: MLServerEnv) -> float:
    """Train digits v1 in the MLServer venv, dump it where MLServer's sklearn runtime loads it,
    and write its model-settings.json. Returns the model's held-out accuracy."""
    from real.models.digits import SCALE, SEED, TEST_FRACTION

    env.model_dir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [str(env.python), "-c", _TRAIN, str(env.model_dir / MODEL_FILE), str(SEED), str(TEST_FRACTION), str(SCALE)],
        capture_output=True, text=True, check=True,
    ).stdout
    settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": f"./{MODEL_FILE}", "version": MODEL_VERSION},
    }
    (env.model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return float(json.loads(out.strip().splitlines()[-1])["accuracy"])


def write_settings(env: MLServerEnv, http_port: int, grpc_port: int, metrics_port: int, parallel_workers: int | None = None) -> None:
    """Server-wide settings: loopback ports, and MLServer's defaults otherwise, except that its
    per-request access log is off (servelab's servers keep none either); `parallel_workers`
    None keeps MLServer's default."""
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "logging_settings": {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"uvicorn.access": {"level": "WARNING"}},
        },
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    env.repository.mkdir(parents=True, exist_ok=True)
    (env.repository / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")


def start(env: MLServerEnv, log_path: Path) -> subprocess.Popen[bytes]:
    """`mlserver start` on the repository, its output to `log_path`; the caller waits for
    readiness (GET /v2/health/ready) and terminates it."""
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("PYTHONPATH", None)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(env.mlserver), "start", str(env.repository)],
            cwd=env.repository, stdout=log, stderr=subprocess.STDOUT, env=environment,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scenarios.mlserver_env", description=__doc__.split("\n")[0])
    p.add_argument("--home", type=Path, default=None, help=f"where the venv and repository go (default ${HOME_ENV} or runs/mlserver)")
    args = p.parse_args(argv)
    env = MLServerEnv((args.home or default_home()).resolve())
    ensure_venv(env)
    accuracy = write_model(env)
    print(f"mlserver: {env.mlserver} serves {env.model_dir} (digits v1, held-out accuracy {accuracy:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
