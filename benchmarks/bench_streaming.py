"""Validation + features in bounded memory: peak RSS and time at 1M, 10M and 30M Adult rows.

Each size runs in a fresh process: a real Dagster run of the reference pipeline's data stages
on a local store, ingesting Adult-shaped CSV (header-less, as the real files; 90 % in the
training member, 10 % in the test member) from a folder: ``raw_adult`` with
``provenance_complete`` and ``schema_conforms``, ``validated_adult`` with
``reject_rate_within_limit``, and ``features`` with ``feature_drift`` (no champion yet, so
against the same snapshot: both tables are read in full, the reference twice above
``REFERENCE_SAMPLE_ROWS``), and ``expectations_met`` on ``validated_adult`` (the Great
Expectations suite, judged a row group at a time once the batch is more than one chunk). The
run is the code a user runs, streaming a chunk of lines (the source's ``chunk_bytes``, 32 MiB
by default) and a row group at a time. ``--no-drift`` and ``--no-expectations`` leave those
checks out (the figures before they streamed). ``poisoning_screen`` still reads the whole
features table (it fits fold models on it, as training does): it is left out.

Printed per size: the process's peak RSS and its ratio to the 1M run (flat: ~1.0), and wall
time per million rows with its ratio to the 1M run (linear: ~1.0). The baseline is the 1M run
of the same invocation. The synthetic files are written first (not timed) and removed after.

Run: ``.venv/bin/python benchmarks/bench_streaming.py [--sizes 1,10,30]`` (millions of rows).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_validation import synthetic_csv

_BLOCK = 1_000_000


def write_source(folder: Path, rows: int) -> int:
    """Write ``adult.data`` and ``adult.test`` with ``rows`` rows in all; their total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    test = rows // 10
    total = 0
    for seed, (name, count) in enumerate((("adult.data", rows - test), ("adult.test", test))):
        with (folder / name).open("wb") as out:
            written, seed = 0, seed * 1000
            while written < count:
                block = min(_BLOCK, count - written)
                data = synthetic_csv(block, seed=seed + written // _BLOCK)
                out.write(data)
                total += len(data)
                written += block
    return total


def child(folder: str, drift: bool, expectations: bool) -> None:
    """One measured run (in its own process): print a JSON line with its figures."""
    import dataclasses

    import dagster as dg

    from secure_pipeline.environment import Environment
    from secure_pipeline.names import EXPECTATIONS_MET, FEATURE_DRIFT
    from secure_pipeline.reference.adult import adult_pipeline

    pipeline = adult_pipeline()
    pipeline = dataclasses.replace(
        pipeline,
        source=dataclasses.replace(
            pipeline.source, location=Path(folder).as_uri() + "/", location_env_var=None,
            max_bytes=1 << 40,
        ),
        schema=dataclasses.replace(pipeline.schema, max_rows=None),
    )  # fmt: skip
    names = pipeline.names
    selection = dg.AssetSelection.assets(
        names.raw, names.validated, names.features
    ).without_checks() | dg.AssetSelection.checks(
        dg.AssetCheckKey(names.raw, "provenance_complete"),
        dg.AssetCheckKey(names.raw, "schema_conforms"),
        dg.AssetCheckKey(names.validated, "reject_rate_within_limit"),
        *([dg.AssetCheckKey(names.validated, EXPECTATIONS_MET)] if expectations else []),
        *([dg.AssetCheckKey(names.features, FEATURE_DRIFT)] if drift else []),
    )
    defs = dg.Definitions.merge(
        pipeline.build_definitions(Environment.LOCAL),
        dg.Definitions(jobs=[dg.define_asset_job("bench_data", selection=selection)]),
    )
    job = defs.resolve_job_def("bench_data")
    with dg.DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        seconds = time.perf_counter() - started
        # Every selected check ran and passed (a skipped drift check would flatter the figures).
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        rows = None
        record = instance.get_latest_materialization_event(names.features)
        if record is not None:
            rows = record.asset_materialization.metadata["dagster/row_count"].value
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok = result.success and len(checks) == 3 + drift + expectations and all(checks.values())
    print(json.dumps({"ok": ok, "checks": checks, "seconds": seconds, "peak_mib": peak_kib / 1024,
                      "feature_rows": rows}))  # fmt: skip


def main() -> None:
    """Run every size in its own process and print the ratios to the first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,30", help="millions of rows, comma-separated")
    parser.add_argument("--no-drift", action="store_true", help="leave feature_drift out")
    parser.add_argument("--no-expectations", action="store_true",
                        help="leave expectations_met out")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, drift=not args.no_drift, expectations=not args.no_expectations)
        return
    sizes = [int(float(s) * 1_000_000) for s in args.sizes.split(",")]
    results = []
    for rows in sizes:
        work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
        try:
            source = work / "source"
            size = write_source(source, rows)
            home = work / "home"
            home.mkdir()
            (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
            env = {**os.environ, "SECURE_PIPELINE_HOME": str(home), "DAGSTER_HOME": str(home),
                   "SECURE_PIPELINE_DEV_KEYS": str(work / "dev-keys")}  # fmt: skip
            env.pop("SECURE_PIPELINE_SOURCE_URI", None)
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(source),
                 *(["--no-drift"] if args.no_drift else []),
                 *(["--no-expectations"] if args.no_expectations else [])], env=env, check=True,
                capture_output=True, text=True, cwd=Path(__file__).parent,
            )  # fmt: skip
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            if not figures["ok"] or figures["feature_rows"] != rows:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"the run at {rows} rows failed: {figures}")
            figures.update(rows=rows, csv_mib=size / 2**20)
            results.append(figures)
            print(
                f"{rows:>11,} rows ({figures['csv_mib']:,.0f} MiB of CSV): peak RSS "
                f"{figures['peak_mib']:,.0f} MiB, {figures['seconds']:.1f} s",
                flush=True,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    base = results[0]
    base_rate = base["seconds"] / (base["rows"] / 1e6)
    what = "validated" + ("" if args.no_expectations else ", expectations_met") + ", features"
    what += "" if args.no_drift else ", feature_drift"
    print(f"\nvalidation + features (raw, schema check, {what}), one process per size")
    for figures in results:
        rate = figures["seconds"] / (figures["rows"] / 1e6)
        print(
            f"  {figures['rows']:>11,} rows  peak RSS {figures['peak_mib']:7,.0f} MiB "
            f"(ratio {figures['peak_mib'] / base['peak_mib']:4.2f}x)   "
            f"{rate:6.2f} s per million rows (ratio {rate / base_rate:4.2f}x)"
        )
    print("  goal: peak RSS flat (ratio ~1.0), time linear (ratio ~1.0)")


if __name__ == "__main__":
    main()
