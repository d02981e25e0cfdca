"""Digits classifiers (scikit-learn's 8x8 digits, which ship inside the package: no network).

Version "1" is a linear softmax model (one 64x10 matmul); version "2" is an MLP with a 512-wide
ReLU hidden layer (~56x the multiply-adds, and more accurate); version "3" is a deliberately
degraded release, the softmax model of "1" trained on only three images per digit (a bad
version for accuracy rollouts: as cheap as "1", far less accurate). scikit-learn only trains; the
weights are stored as plain arrays in `.npz` (loaded with allow_pickle=False, so a cache file
can never execute code) and inference is pure numpy, which releases the GIL in its kernels.

Training is deterministic and happens on first use into `$SERVELAB_CACHE` (default
~/.cache/servelab). Several replicas may train at once on a cold cache: each writes a temp file
and `os.replace`s it, so readers only ever see a complete file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

VERSIONS = ("1", "2", "3")
CACHE_ENV = "SERVELAB_CACHE"
SCALE = 1.0 / 16.0  # digits pixels are 0..16
SEED = 0
TEST_FRACTION = 0.25
FORMAT = 1  # bump when the stored arrays change meaning
V3_PER_DIGIT = 3  # training images per digit the degraded version 3 sees


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "servelab")


def _dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    return x_tr, x_te, y_tr, y_te


def test_split() -> tuple[np.ndarray, np.ndarray]:
    """Held-out images (raw 0..16 pixels, float32 (n, 64)) and labels, never seen in training."""
    _, x_te, _, y_te = _dataset()
    return x_te, y_te


@dataclass(frozen=True)
class DigitsModel:
    """Softmax over `layers`: hidden layers are ReLU, the last one produces logits."""

    version: str
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(B, 64) float32 raw pixels -> (B, 10) float32 class probabilities."""
        h = x * np.float32(SCALE)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < last:
                np.maximum(h, 0, out=h)
        h -= h.max(axis=1, keepdims=True)
        np.exp(h, out=h)
        h /= h.sum(axis=1, keepdims=True)
        return h

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)


def _train_v1(x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(x * SCALE, y)
    return [clf.coef_.T.copy()], [clf.intercept_.copy()]


def _train_v3(x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A release gone wrong: the same softmax as v1, fitted on the first V3_PER_DIGIT training
    images of each digit only, so it generalises badly (deterministic: no random draw)."""
    from sklearn.linear_model import LogisticRegression

    few = np.concatenate([np.flatnonzero(y == digit)[:V3_PER_DIGIT] for digit in range(10)])
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(x[few] * SCALE, y[few])
    return [clf.coef_.T.copy()], [clf.intercept_.copy()]


def _train_v2(x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(512,), max_iter=300, random_state=SEED, alpha=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x * SCALE, y)
    return [w.copy() for w in clf.coefs_], [b.copy() for b in clf.intercepts_]


TRAINERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[list[np.ndarray], list[np.ndarray]]]] = {
    "1": _train_v1,
    "2": _train_v2,
    "3": _train_v3,
}


def _path(version: str) -> Path:
    return cache_dir() / f"digits-v{version}-f{FORMAT}.npz"


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load(path: Path, version: str) -> DigitsModel:
    with np.load(path, allow_pickle=False) as z:
        layers = int(z["layers"])
        ws = tuple(np.ascontiguousarray(z[f"w{i}"], dtype=np.float32) for i in range(layers))
        bs = tuple(np.ascontiguousarray(z[f"b{i}"], dtype=np.float32) for i in range(layers))
    return DigitsModel(version, ws, bs)


def load_model(version: str) -> DigitsModel:
    """The model of `version`, training and caching it on first use."""
    if version not in TRAINERS:
        raise KeyError(f"unknown digits model version {version!r}; have {sorted(TRAINERS)}")
    path = _path(version)
    if not path.exists():
        x_tr, _, y_tr, _ = _dataset()
        ws, bs = TRAINERS[version](x_tr, y_tr)
        arrays: dict[str, np.ndarray] = {"layers": np.asarray(len(ws))}
        for i, (w, b) in enumerate(zip(ws, bs)):
            arrays[f"w{i}"] = np.asarray(w, dtype=np.float32)
            arrays[f"b{i}"] = np.asarray(b, dtype=np.float32)
        _save_atomic(path, arrays)
    return _load(path, version)
