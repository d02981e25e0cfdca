"""The offline feature table: one row per entity, the source the online stores are filled from.

The teaching fit with the digits model: an entity's features are one held-out digits image
(real.models.digits.test_split, never seen in training), its 64 pixels x0..x63, plus the label
kept for judging the prediction. Entity e is image perm[e mod 450], perm a permutation of the
held-out images drawn from `seed`: the most popular entities (the low ids, under Zipf) are not
the first images of the split, and the same seed gives the same table on every machine.

Written as Parquet, atomically (sim.files): a reader sees the old table or the new one. Reading
checks the file and its columns and raises ConfigError(key, one line) naming the config key the
caller passes in, so a bad table is refused before anything runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import ConfigError
from sim.files import write_parquet

FEATURE_WIDTH = 64
FEATURE_COLUMNS = tuple(f"x{i}" for i in range(FEATURE_WIDTH))
ENTITY_COLUMN = "entity_id"
LABEL_COLUMN = "label"
TABLE_COLUMNS = (ENTITY_COLUMN, *FEATURE_COLUMNS, LABEL_COLUMN)
TABLE_HINT = f"a Parquet table with columns {ENTITY_COLUMN}, x0..x{FEATURE_WIDTH - 1}, {LABEL_COLUMN}"


def generate_table(n_entities: int, seed: int) -> pd.DataFrame:
    """Entities 0..n_entities-1, each one held-out digits image (float32 pixels) and its label."""
    if n_entities < 1:
        raise ValueError(f"need at least one entity, got {n_entities}")
    from real.models.digits import test_split

    images, labels = test_split()
    perm = np.random.default_rng(seed).permutation(len(images))
    chosen = perm[np.arange(n_entities) % len(images)]
    frame = pd.DataFrame(images[chosen].astype(np.float32), columns=list(FEATURE_COLUMNS))
    frame.insert(0, ENTITY_COLUMN, np.arange(n_entities, dtype=np.int64))
    frame[LABEL_COLUMN] = labels[chosen].astype(np.int64)
    return frame


def write_table(path: Path, n_entities: int, seed: int) -> pd.DataFrame:
    """Generate the table and write it to `path` atomically; returns what was written."""
    frame = generate_table(n_entities, seed)
    write_parquet(Path(path), frame)
    return frame


def read_table(path: Path | str, key: str) -> pd.DataFrame:
    """The table at `path`, checked: a readable Parquet file with every column, numeric, and
    distinct entity ids. Any fault is a ConfigError(key, one line) saying what to give instead."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"{path} {'is not a file' if path.exists() else 'does not exist'}; give {TABLE_HINT}")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(key, f"{path} is not a Parquet file ({first}); give {TABLE_HINT}") from exc
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(key, f"{path} lacks column(s) {shown}; give {TABLE_HINT}")
    wrong = [c for c in TABLE_COLUMNS if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]
    if wrong:
        raise ConfigError(key, f"{path}: column {wrong[0]} is {frame[wrong[0]].dtype}, not a number; give {TABLE_HINT}")
    for c in (ENTITY_COLUMN, LABEL_COLUMN):
        if not pd.api.types.is_integer_dtype(frame[c]):
            raise ConfigError(key, f"{path}: column {c} is {frame[c].dtype}, not an integer; give {TABLE_HINT}")
    if frame.empty:
        raise ConfigError(key, f"{path} has no rows; give {TABLE_HINT}")
    dup = frame[ENTITY_COLUMN].duplicated()
    if dup.any():
        raise ConfigError(key, f"{path}: entity {int(frame[ENTITY_COLUMN][dup].iloc[0])} appears more than once; give {TABLE_HINT}")
    return frame[list(TABLE_COLUMNS)]
