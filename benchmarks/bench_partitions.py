"""A 30-day backfill of a daily-partitioned pipeline: per-partition time vs a single partition.

The reference pipeline over daily folders (``<day>/adult.data``, ``<day>/adult.test``; each
day a different sample of Adult rows, so nothing is deduplicated). Each partition run is the
ingest job a backfill launches for that day: ``raw_adult``, ``validated_adult`` and
``features`` with every blocking check of each (provenance, schema, reject rate, expectations,
drift against the first day, poisoning screen), executed in this process one after another as
the backfill's runs. The poisoning screen's limit is raised to 0.12: on a few thousand rows its
fold models leave more labels undecided than on the whole file (6 % at 4,000 rows, against
the reference policy's 5 %); the screen still runs in full.

1. Baseline: a single partition (the second day) in a fresh home, after the first day there,
   untimed (the process's imports were paid by a warm-up in another home; the home's
   first-use costs by its first day).
2. Backfill: the 30 days in another fresh home, each day's run timed (the first day pays the
   home's first-use costs: the median is the figure).
3. The baseline again, so drift during the invocation shows.

Printed: the baseline, the backfill's median and mean per-partition time with their ratios to
the baseline (goal: ~1.0, the per-partition time does not grow with the days stored), and the
mean of the first and last five days (the trend across the backfill). The days are written
first (not timed) and removed after.

Run: ``.venv/bin/python benchmarks/bench_partitions.py [--days 30] [--rows 3000]``.
"""

import argparse
import dataclasses
import datetime
import shutil
import statistics
import sys
import time
from pathlib import Path

from _common import temporary_home

REPO = Path(__file__).resolve().parent.parent


def write_days(folder: Path, days: list[str], rows: int) -> str:
    """A different sample of Adult rows each day: ``rows`` training rows, half as many test rows.

    Each day's files differ (so no snapshot is deduplicated); the rows are real Adult rows, so
    every check passes (with the poisoning limit of `daily_pipeline`).
    """
    import random

    from secure_pipeline.reference.adult import DATA_DIR

    train = (DATA_DIR / "adult.data").read_text().splitlines(keepends=True)
    test = (DATA_DIR / "adult.test").read_text().splitlines(keepends=True)
    header, test = test[0], [line for line in test[1:] if line.strip()]
    train = [line for line in train if line.strip()]
    for i, day in enumerate(days):
        sample = random.Random(i)
        (folder / day).mkdir(parents=True)
        (folder / day / "adult.data").write_text("".join(sample.sample(train, rows)))
        (folder / day / "adult.test").write_text(header + "".join(sample.sample(test, rows // 2)))
    return folder.as_uri() + "/{date}/"


def daily_pipeline(location: str, start: str, window: int, rows: int):
    """The reference pipeline over the daily folders."""
    from secure_pipeline.pipeline import SourcePartitions
    from secure_pipeline.reference.adult import adult_pipeline

    reference = adult_pipeline()
    return dataclasses.replace(
        reference,
        source=dataclasses.replace(
            reference.source, location=location, location_env_var=None,
            partitions=SourcePartitions(start=start, window=window),
        ),
        schema=dataclasses.replace(reference.schema, min_rows=rows // 2, max_rows=rows * 4),
        orchestration=dataclasses.replace(reference.orchestration, landing_env_var=None),
        policy=dataclasses.replace(reference.policy, max_suspected_poisoning=0.12),
    )  # fmt: skip


def run_days(pipeline, days: list[str], warm: tuple[str, ...] = ()) -> list[float]:
    """Run the ingest job for each day in a fresh home; the wall time of each run.

    The ``warm`` days run first, untimed: the home's first-use costs (its SQLite storage, the
    first audit segment) are paid before the timed days.
    """
    import dagster as dg

    from secure_pipeline.environment import Environment

    work, _home = temporary_home("bench-partitions-")
    try:
        defs = pipeline.build_definitions(Environment.LOCAL)
        job = defs.resolve_job_def(f"{pipeline.name}_ingest")
        times = []
        with dg.DagsterInstance.get() as instance:
            for day in warm:
                job.execute_in_process(instance=instance, partition_key=day)
            for day in days:
                start = time.perf_counter()
                result = job.execute_in_process(
                    instance=instance, partition_key=day, raise_on_error=False
                )
                times.append(time.perf_counter() - start)
                if not result.success:
                    sys.exit(f"the ingest run of {day} failed: no figure from a failed run")
        return times
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Run the benchmark and print its figures."""
    import logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows", type=int, default=3000, help="training rows per day")
    args = parser.parse_args()
    logging.getLogger("dagster").setLevel(logging.WARNING)
    first = datetime.date(2026, 1, 1)
    days = [(first + datetime.timedelta(days=i)).isoformat() for i in range(args.days)]
    data = Path(__import__("tempfile").mkdtemp(prefix="bench-days-", dir=Path.cwd()))
    try:
        location = write_days(data, days, args.rows)
        pipeline = daily_pipeline(location, days[0], args.days, args.rows)
        run_days(pipeline, days[:1])  # warm-up of the process: imports, first-use costs
        single = run_days(pipeline, days[1:2], warm=(days[0],))[0]
        backfill = run_days(pipeline, days)
        again = run_days(pipeline, days[1:2], warm=(days[0],))[0]
    finally:
        shutil.rmtree(data, ignore_errors=True)
    baseline = statistics.mean([single, again])
    median, mean = statistics.median(backfill), statistics.mean(backfill)
    head, tail = statistics.mean(backfill[:5]), statistics.mean(backfill[-5:])
    rows = f"{args.rows} + {args.rows // 2} rows a day"
    print(f"\n{args.days}-day backfill of the ingest job, {rows}")
    print(f"  single partition (before, after)   {single:6.2f} s, {again:6.2f} s")
    print(f"  backfill, per partition: median    {median:6.2f} s   ratio {median / baseline:5.2f}x")
    print(f"  backfill, per partition: mean      {mean:6.2f} s   ratio {mean / baseline:5.2f}x")
    print(f"  first 5 days / last 5 days         {head:6.2f} s / {tail:6.2f} s   ratio "
          f"{tail / head:5.2f}x")  # fmt: skip
    print(f"  backfill total                     {sum(backfill):6.1f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
