"""Subject index lookup at 1,000 ingestions, and the entry filter on a 1,000,000-row CSV.

Lookup (goal: <= 1 s): a local store holding the subject indexes of 1,000 ingestions of
10,000 subjects each (written with `write_subject_index`, as the raw asset writes them); one
subject is looked up (one listing, then one 16th of every ingestion's index, read by a small
thread pool and binary-searched). The baseline reads every ingestion's whole digest set (all
16 shards) and scans it, in the same invocation.

Entry filter (goal: <= 2x): streaming a 1,000,000-row CSV through `EntryFilter` (split records,
HMAC every identifier, drop erased subjects) against only parsing it with the csv module; once
with no quoted field, once with quoted fields on every row (the csv-module path).

Run: ``.venv/bin/python benchmarks/bench_subject_lookup.py [--ingestions N] [--subjects N]``.
"""

import argparse
import csv
import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import interleaved, report

from secure_pipeline.privacy.subjects import (
    DIGEST_BYTES,
    READ_THREADS,
    SHARDS,
    EntryFilter,
    lookup,
    shard_key,
    subject_hash,
    write_subject_index,
)
from secure_pipeline.spec import Column, DatasetSchema
from secure_pipeline.storage.local import LocalSnapshotStore

PIPELINE = "bench"
KEY = bytes(range(32))


def build_indexes(store: LocalSnapshotStore, ingestions: int, subjects: int, target: str) -> list:
    """Write the indexes; the target subject is in every 100th ingestion."""
    names = []
    wanted = bytes.fromhex(target)[:DIGEST_BYTES]
    for n in range(ingestions):
        raw_index = os.urandom(32).hex()
        digests = os.urandom(subjects * DIGEST_BYTES)
        if n % 100 == 0:
            digests += wanted
        write_subject_index(store, PIPELINE, raw_index, digests, {"created_at": f"{n:06d}"})
        names.append(raw_index)
    return names


def full_scan(store: LocalSnapshotStore, names: list[str], target: str) -> list[str]:
    """The baseline: every digest of every ingestion read and searched."""
    wanted = bytes.fromhex(target)[:DIGEST_BYTES]

    def holds(raw_index: str) -> bool:
        for shard in SHARDS:
            data = store.read_object(shard_key(PIPELINE, shard, raw_index))
            at = data.find(wanted)
            while at >= 0:
                if at % DIGEST_BYTES == 0:
                    return True
                at = data.find(wanted, at + 1)
        return False

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return sorted(r for r, found in zip(names, pool.map(holds, names), strict=True) if found)


def bench_lookup(ingestions: int, subjects: int, repeats: int) -> float:
    target = subject_hash(KEY, "M-0000042")
    with tempfile.TemporaryDirectory(prefix="bench-subjects-") as tmp:
        # No fsync while building: the setup is not what is measured.
        store = LocalSnapshotStore(Path(tmp), fsync=False)
        start = time.perf_counter()
        names = build_indexes(store, ingestions, subjects, target)
        print(f"wrote {ingestions} indexes of {subjects} subjects in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        expected = sorted(names[::100])
        assert lookup(store, PIPELINE, target) == expected
        assert full_scan(store, names, target) == expected
        times = interleaved(
            {
                "full scan of every digest set (baseline)": lambda: full_scan(store, names, target),
                "lookup (one shard per ingestion)": lambda: lookup(store, PIPELINE, target),
            },
            repeats,
        )
    median = statistics.median(times["lookup (one shard per ingestion)"])
    base = statistics.median(times["full scan of every digest set (baseline)"])
    print(f"\nlookup of one subject in {ingestions} ingestions x {subjects} subjects")
    print(f"  full scan (baseline)  median {base:7.3f} s")
    print(f"  lookup                median {median:7.3f} s   ratio {median / base:5.2f}x")
    print(f"  goal <= 1 s: {'meets' if median <= 1 else 'MISSES'} ({median:.3f} s)")
    return median


def csv_file(rows: int, quoted: bool) -> bytes:
    header = "member_id,age,workclass,fnlwgt,education,years,marital,occupation,race,sex\n"
    if quoted:
        line = '{i:07d}M,{a},"Private, Ltd",{f},Bachelors,13,Never-married,"Adm ""clerical""",W,M'
    else:
        line = "{i:07d}M,{a},Private,{f},Bachelors,13,Never-married,Adm-clerical,White,Male"
    body = "\n".join(line.format(i=i, a=17 + i % 70, f=i * 7 % 99991) for i in range(rows))
    return (header + body + "\n").encode()


def bench_filter(rows: int, repeats: int) -> float:
    names = ("member_id", "age", "workclass", "fnlwgt", "education", "years", "marital",
             "occupation", "race", "sex")  # fmt: skip
    schema = DatasetSchema(
        name="bench",
        has_header=True,
        columns=tuple(
            Column(n, "string", role="identifier" if n == "member_id" else "feature") for n in names
        ),
    )
    erased = frozenset({subject_hash(KEY, "0000005M"), subject_hash(KEY, f"{rows // 2:07d}M")})
    worst = 0.0
    for quoted in (False, True):
        data = csv_file(rows, quoted)
        chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]

        def parse(data: bytes = data) -> None:
            for _row in csv.reader(io.TextIOWrapper(io.BytesIO(data), "utf-8", newline="")):
                pass

        def run(erase: frozenset[str], chunks: list[bytes] = chunks) -> EntryFilter:
            entry = EntryFilter(schema, KEY, erase)
            for _chunk in entry.filter(iter(chunks)):
                pass
            return entry

        assert run(erased).excluded_rows == 2
        times = interleaved(
            {
                "csv module parse (baseline)": parse,
                "entry filter, nothing erased": lambda: run(frozenset()),
                "entry filter, 2 subjects erased": lambda: run(erased),
            },
            repeats,
        )
        kind = "quoted fields on every row" if quoted else "no quoted field"
        title = f"entry filter on {rows:,} rows ({len(data) / 1e6:.0f} MB, {kind})"
        worst = max(worst, report(title, times, "csv module parse (baseline)", 2.0))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ingestions", type=int, default=1000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-filter", action="store_true")
    args = parser.parse_args()
    bench_lookup(args.ingestions, args.subjects, args.repeats)
    if not args.skip_filter:
        bench_filter(args.rows, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
