"""``expectations_met`` a row group at a time vs Great Expectations on the whole table.

The same 1M Adult-like validated rows, stored as the pipeline stores them (Parquet, a row group
per chunk of the source: ``ROWS_PER_GROUP`` rows, about one 32 MiB chunk of CSV). Both sides
start from the file and give the same outcomes (asserted):

* Great Expectations: the file read whole into pandas, the suite run on it (what a one-chunk
  batch gets, and what every batch got before);
* streamed: the row groups read one at a time and folded into the suite's statistics
  (`stream_expectations`), as a batch of more than one chunk is judged now.

Printed: medians over interleaved repetitions and the ratio to Great Expectations. Memory is
`bench_streaming.py`'s: the peak RSS of a whole run at 1M / 10M / 30M rows with this check.

Run: ``.venv/bin/python benchmarks/bench_expectations.py`` (~1 minute).
"""

import dataclasses
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from _common import interleaved, report
from bench_validation import synthetic_csv

from secure_pipeline.reference.adult import ADULT_SCHEMA
from secure_pipeline.storage.tables import frame_table
from secure_pipeline.validation.parsing import parse_fileset

ROWS = 1_000_000
ROWS_PER_GROUP = 260_000


def main() -> None:
    from secure_pipeline.validation.expectations import run_expectations, stream_expectations

    schema = dataclasses.replace(ADULT_SCHEMA, min_rows=ROWS // 2, max_rows=ROWS * 2)
    frame = parse_fileset({"train": synthetic_csv(ROWS)}, ADULT_SCHEMA).frame
    with tempfile.TemporaryDirectory(prefix="bench-expectations-") as directory:
        path = Path(directory) / "validated.parquet"
        pq.write_table(frame_table(frame), path, row_group_size=ROWS_PER_GROUP,
                       compression="zstd")  # fmt: skip
        del frame
        groups = pq.ParquetFile(path).num_row_groups
        print(f"{ROWS:,} rows, {groups} row groups, {path.stat().st_size / 2**20:.0f} MiB")

        def whole() -> object:
            return run_expectations(pq.read_table(path).to_pandas(), schema)

        def streamed() -> object:
            with pq.ParquetFile(path) as file:
                return stream_expectations(
                    (file.read_row_group(i) for i in range(file.num_row_groups)), schema
                )

        a, b = whole(), streamed()
        assert a.outcomes == b.outcomes, (a.outcomes, b.outcomes)
        assert a.success, a.failed
        times = interleaved(
            {"Great Expectations, whole table": whole, "streamed, a row group at a time": streamed},
            repeats=5,
        )
        report(f"expectations_met on {ROWS:,} validated rows", times,
               "Great Expectations, whole table", None)  # fmt: skip


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"  (benchmark took {time.perf_counter() - start:.0f} s)")
