"""schema_conforms + expectations_met on 1M Adult-like rows vs hand-written pandas checks.

Goal: <= 2x. Both sides start from the same typed frame (what parsing produces) and apply the
same rules: the strict column set, dtypes, nullability, ranges and allowed categories row by
row (finding the failing rows), then the batch rules (row-count bounds, null fractions, min,
max and mean of the described columns, the label set). The library side is the code the checks
run: `validate_batch` (pandera) and `run_expectations` (Great Expectations, ephemeral context
created per call, as in a check step). Imports are excluded (both warm); they are printed apart.
"""

import subprocess
import sys
import time

import numpy as np
import pandas as pd
from _common import interleaved, report

from secure_pipeline.pipeline import DatasetSchema
from secure_pipeline.reference.adult import ADULT_SCHEMA
from secure_pipeline.validation.parsing import parse_fileset

ROWS = 1_000_000


def synthetic_csv(rows: int, seed: int = 0) -> bytes:
    """Adult-shaped CSV text: header-less, ", "-separated, "?" for missing values."""
    rng = np.random.default_rng(seed)
    columns = []
    for column in ADULT_SCHEMA.columns:
        if column.dtype == "category":
            values = np.array(column.allowed, dtype=object)[
                rng.integers(0, len(column.allowed), rows)
            ]
            if column.nullable:
                values = np.where(rng.random(rows) < 0.03, "?", values)
        else:
            low, high = int(column.minimum or 0), int(column.maximum or 1_000_000)
            values = rng.integers(low, high + 1, rows).astype(str)
            if column.name == "age":
                values = rng.normal(38.6, 12, rows).clip(17, 90).astype(int).astype(str)
            if column.name == "hours_per_week":
                values = rng.normal(40.4, 12, rows).clip(1, 99).astype(int).astype(str)
        columns.append(values)
    lines = [", ".join(row) for row in zip(*columns, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def handwritten(frame: pd.DataFrame, schema: DatasetSchema) -> tuple[int, bool]:
    """The same rules in plain vectorized pandas: rejected rows and the batch verdict."""
    expected = [*schema.column_names, "split"]
    assert sorted(frame.columns) == sorted(expected), "strict column set"
    kinds = {"int": "Int64", "float": "float64", "category": "category", "string": "string"}
    bad = np.zeros(len(frame), dtype=bool)
    for column in schema.columns:
        series = frame[column.name]
        assert str(series.dtype) == kinds[column.dtype], column.name
        missing = series.isna().to_numpy()
        if not column.nullable:
            bad |= missing
        if column.allowed is not None:
            bad |= ~(series.isin(column.allowed).to_numpy() | missing)
        if column.minimum is not None or column.maximum is not None:
            low = -np.inf if column.minimum is None else column.minimum
            high = np.inf if column.maximum is None else column.maximum
            inside = series.between(low, high).fillna(True)
            bad |= ~inside.to_numpy(dtype=bool)
    ok = schema.min_rows <= len(frame) <= (schema.max_rows or len(frame))
    for column in schema.columns:
        series = frame[column.name]
        if column.max_null_fraction is not None:
            ok &= series.isna().mean() <= column.max_null_fraction
        if column.mean_between is not None:
            ok &= column.minimum <= series.min() and series.max() <= column.maximum
            ok &= column.mean_between[0] <= series.mean() <= column.mean_between[1]
        if column.name == schema.label:
            ok &= set(series.dropna().unique()) == set(column.allowed)
    return int(bad.sum()), bool(ok)


def import_seconds(module: str) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from secure_pipeline.validation.expectations import run_expectations
    from secure_pipeline.validation.schema import validate_batch

    batch = parse_fileset({"train": synthetic_csv(ROWS)}, ADULT_SCHEMA)
    assert not batch.problems
    frame = batch.frame
    print(f"{len(frame):,} rows, {frame.shape[1]} columns")
    # The synthetic batch is ~20x Adult; judge it with bounds that fit its size.
    import dataclasses

    schema = dataclasses.replace(ADULT_SCHEMA, min_rows=ROWS // 2, max_rows=ROWS * 2)

    def library() -> None:
        report = validate_batch(batch, schema)
        assert not report.structural
        assert run_expectations(batch.frame, schema).success

    def baseline() -> None:
        rejected, ok = handwritten(frame, schema)
        assert rejected == 0
        assert ok

    times = interleaved(
        {"hand-written pandas checks": baseline, "schema_conforms + expectations_met": library},
        repeats=7,
    )
    report("validation rules on 1M Adult-like rows", times, "hand-written pandas checks", 2.0)
    for module in ("pandera.pandas", "great_expectations"):
        print(f"  import {module}: {import_seconds(module):.2f} s (a fresh check process pays it)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"  (benchmark took {time.perf_counter() - start:.0f} s)")
