"""Local snapshot store: write + verified read of a 1M x 15 table vs plain pyarrow.parquet.

Goal: <= 1.25x. The store variant does everything the pipeline does: Parquet (zstd) in memory,
SHA-256, create-only write (spool file, fsync, read-only, link, manifest), then a read that
re-hashes the bytes before parsing them. Each repetition uses a fresh directory, since
re-writing identical content is a no-op.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import interleaved, report

from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.storage.tables import parquet_to_table, table_to_parquet

ROWS = 1_000_000


def adult_like_table(rows: int = ROWS, seed: int = 0) -> pa.Table:
    """15 columns shaped like Adult: 6 integers, 9 low-cardinality strings."""
    rng = np.random.default_rng(seed)
    cats = {
        "workclass": 8, "education": 16, "marital_status": 7, "occupation": 14,
        "relationship": 6, "race": 5, "sex": 2, "native_country": 41, "income": 2,
    }  # fmt: skip
    columns = {
        "age": rng.integers(17, 91, rows),
        "fnlwgt": rng.integers(10_000, 1_500_000, rows),
        "education_num": rng.integers(1, 17, rows),
        "capital_gain": np.where(rng.random(rows) < 0.08, rng.integers(1, 99_999, rows), 0),
        "capital_loss": np.where(rng.random(rows) < 0.05, rng.integers(1, 4_356, rows), 0),
        "hours_per_week": rng.integers(1, 100, rows),
    }
    for name, n in cats.items():
        values = np.array([f"{name}-{i}" for i in range(n)])
        columns[name] = values[rng.integers(0, n, rows)]
    return pa.table(columns)


def main() -> None:
    table = adult_like_table()
    work = Path(tempfile.mkdtemp(prefix="bench-local-"))
    counter = {"n": 0}

    def fresh(name: str) -> Path:
        counter["n"] += 1
        path = work / f"{name}-{counter['n']}"
        path.mkdir()
        return path

    def plain(compression: str = "snappy"):
        def run() -> None:
            path = fresh("plain") / "t.parquet"
            pq.write_table(table, path, compression=compression)
            assert pq.read_table(path).num_rows == ROWS

        return run

    def store() -> None:
        snapshots = LocalSnapshotStore(fresh("store"))
        ref = snapshots.put_bytes("features", table_to_parquet(table), ext="parquet",
                                  format="parquet")  # fmt: skip
        assert parquet_to_table(snapshots.read_bytes(ref)).num_rows == ROWS

    try:
        times = interleaved(
            {
                "pyarrow write+read (defaults: snappy)": plain(),
                "pyarrow write+read (zstd, same codec)": plain("zstd"),
                "snapshot store write+verified read": store,
            },
            repeats=7,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(
        f"local store, {ROWS:,} rows x 15 columns",
        times,
        "pyarrow write+read (defaults: snappy)",
        goal=1.25,
    )


if __name__ == "__main__":
    main()
