"""The S3 landing-zone sensor over a zone of 100k objects, evaluated as Dagster evaluates it.

Goal: the first tick and an incremental tick (one new batch after the backlog) each <= 2 s of
wall time, every tick's run requests exactly the complete batches, each once.

Timed: ``sensor.evaluate_tick(build_sensor_context(...))`` of the real ``adult_landing_zone``
sensor from the built definitions: its own boto3 client, the scan (LIST pages from the cursor,
HEAD of every file of each complete batch), the run requests and the cursor. Not timed: the
daemon's gRPC round trip to the code server and the launching of the runs themselves.

Two zones of ~100k objects in versioned buckets, each a realistic mix:

* ``dense``: 33,334 hourly batch folders (``2022-01-01T0000Z/``), each ``_SUCCESS``,
  ``adult.data`` and ``adult.test``: a backlog of complete batches. A tick launches at most
  ``landing_max_runs_per_tick`` (25) runs, so it is bound by that run budget: the backlog takes
  1,334 ticks; a sample of ticks at its start, middle and end is timed and extrapolated.
* ``sparse``: 400 daily folders, each the two source files plus 248 provider extracts
  (``parts/part-00000.csv.gz``): few batches among many keys. Listing dominates, the time
  budget (``landing_tick_seconds``, 1.5 s, checked at page ends) stops each tick, and the whole
  backlog is worked through tick by tick.

Once caught up, an incremental tick (one new complete batch) is timed on both zones, and on the
dense zone also the worst case the cursor allows: ``MAX_PENDING`` (50) half-uploaded batches
re-checked by HEAD on every tick besides the new batch.

Baselines, run in the same invocation against the same server: a bare boto3 ListObjectsV2
paginator over the same keys (the pages a tick fetched, or the whole zone), and for the
incremental tick one bare ListObjectsV2 with StartAfter = the cursor.

The server is moto (in its own process, populated straight into its backend: 100k PUTs over
HTTP would take minutes). Moto sorts the whole bucket on every LIST (~0.3-0.5 s per 1000-key
page at 100k objects; S3 takes ~20-50 ms), so the figures under moto are an upper bound. Each
tick's LIST and HEAD calls and the time spent inside them are counted, and the tick is split
into S3 time and the sensor's own time, to extrapolate to real S3 (own time + LIST/HEAD count x
an assumed 20-50 ms per LIST page and 10-30 ms per HEAD). Runs ~3 minutes on 2 cores.
"""

import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

PREFIX = "landing/adult/"
DENSE_BUCKET, DENSE_FOLDERS = "bench-landing-dense", 33_334
SPARSE_BUCKET, SPARSE_FOLDERS, SPARSE_PARTS = "bench-landing-sparse", 400, 248
S3_LIST_SECONDS = (0.020, 0.050)  # real S3 per 1000-key LIST page (assumed range)
S3_HEAD_SECONDS = (0.010, 0.030)  # real S3 per HEAD, same region (assumed range)
GOAL_SECONDS = 2.0


# -- the zones ----------------------------------------------------------------------------------


def dense_folder(index: int) -> str:
    """The ``index``-th hourly batch folder of the dense zone."""
    return (datetime(2022, 1, 1, tzinfo=UTC) + timedelta(hours=index)).strftime("%Y-%m-%dT%H%MZ/")


def sparse_folder(index: int) -> str:
    """The ``index``-th daily batch folder of the sparse zone."""
    return (datetime(2022, 1, 1, tzinfo=UTC) + timedelta(days=index)).strftime("%Y-%m-%d/")


def dense_keys(index: int) -> list[str]:
    """Keys of a dense batch folder, in listing order."""
    return [f"{PREFIX}{dense_folder(index)}{n}" for n in ("_SUCCESS", "adult.data", "adult.test")]


def sparse_keys(index: int) -> list[str]:
    """Keys of a sparse batch folder, in listing order."""
    folder = f"{PREFIX}{sparse_folder(index)}"
    parts = [f"{folder}parts/part-{p:05d}.csv.gz" for p in range(SPARSE_PARTS)]
    return [f"{folder}adult.data", f"{folder}adult.test", *parts]


def serve() -> None:
    """Server process: fill both buckets in moto's backend, serve S3, print the port."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    started = time.perf_counter()
    for bucket, count, keys in ((DENSE_BUCKET, DENSE_FOLDERS, dense_keys),
                                (SPARSE_BUCKET, SPARSE_FOLDERS, sparse_keys)):  # fmt: skip
        backend.create_bucket(bucket, "us-east-1")
        backend.put_bucket_versioning(bucket, "Enabled")
        for index in range(count):
            for key in keys(index):
                backend.put_object(bucket, key, b"x", disable_notification=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(f"{server.get_host_and_port()[1]} {time.perf_counter() - started:.1f}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop()


def start_server() -> tuple[subprocess.Popen, str]:
    """Start the populated moto server; its process and endpoint."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug logs every request
        text=True,
    )
    assert server.stdout is not None
    port, seconds = server.stdout.readline().split()
    print(f"moto server populated ({DENSE_FOLDERS * 3:,} + {SPARSE_FOLDERS * 250:,} objects) "
          f"in {seconds} s")  # fmt: skip
    return server, f"http://127.0.0.1:{port}"


# -- counting S3 calls --------------------------------------------------------------------------


class S3Calls:
    """Counts the S3 operations of the clients it is attached to, and the time inside them."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.keys = 0
        self.seconds = 0.0
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()
        # (start, end, operation) of every call: pending batches are HEADed concurrently, so
        # the time spent waiting on S3 is the union of the intervals, not their sum.
        self.intervals: list[tuple[float, float, str]] = []

    @property
    def wall_seconds(self) -> float:
        """Time during which at least one call was in flight."""
        total, end = 0.0, float("-inf")
        for start, stop, _ in sorted(self.intervals):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total

    def sequential(self, operation: str) -> float:
        """How many back-to-back rounds ``operation``'s calls amount to (calls / overlap)."""
        mine = [(a, b, o) for a, b, o in self.intervals if o == operation]
        busy = sum(b - a for a, b, _ in mine)
        if not busy:
            return 0.0
        union = S3Calls.__new__(S3Calls)
        union.intervals = mine
        return len(mine) * union.wall_seconds / busy

    def attach(self, client: Any) -> Any:
        """Count ``client``'s calls from now on; returns it."""
        client.meta.events.register("before-call.s3", self._before)
        client.meta.events.register("after-call.s3", self._after)
        return client

    def _before(self, model: Any, context: dict, **_: Any) -> None:
        with self._lock:
            self.calls[model.name] += 1
            self._started[id(context)] = time.perf_counter()

    def _after(self, model: Any, parsed: dict, context: dict, **_: Any) -> None:
        now = time.perf_counter()
        with self._lock:
            started = self._started.pop(id(context))
            self.seconds += now - started
            self.intervals.append((started, now, model.name))
            if model.name == "ListObjectsV2":
                self.keys += len(parsed.get("Contents", []))

    def reset(self) -> None:
        """Start counting afresh."""
        self.calls.clear()
        self.keys, self.seconds = 0, 0.0
        self.intervals = []


CALLS = S3Calls()
SCANS: list[Any] = []  # the ScanResult of every tick, in order


def instrument() -> None:
    """Count the sensor's S3 calls and keep each tick's scan result (library code unchanged)."""
    import secure_pipeline.storage.s3 as s3
    from secure_pipeline.ingestion.landing import LandingZone

    make_client = s3.make_s3_client
    scan = LandingZone.scan

    def counted_client(*args: Any, **kwargs: Any) -> Any:
        return CALLS.attach(make_client(*args, **kwargs))

    def kept_scan(self: LandingZone, *args: Any, **kwargs: Any) -> Any:
        result = scan(self, *args, **kwargs)
        SCANS.append(result)
        return result

    s3.make_s3_client = counted_client  # the sensor imports it from the module at each tick
    LandingZone.scan = kept_scan


# -- ticks --------------------------------------------------------------------------------------


class Tick:
    """One evaluated tick: wall time, S3 calls, the scan and the run requests."""

    def __init__(self, sensor: Any, instance: Any, cursor: str | None) -> None:
        import dagster as dg

        CALLS.reset()
        started = time.perf_counter()
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
        self.seconds = time.perf_counter() - started
        self.s3_seconds = CALLS.wall_seconds
        self.lists = CALLS.calls["ListObjectsV2"]
        self.heads = CALLS.calls["HeadObject"]
        self.head_rounds = CALLS.sequential("HeadObject")
        self.keys_fetched = CALLS.keys
        self.scan = SCANS[-1]
        self.cursor: str = data.cursor
        self.folders = [r.tags["secure_pipeline/landing_batch"] for r in data.run_requests]
        self.run_keys = [r.run_key for r in data.run_requests]

    def real_s3(self) -> tuple[float, float]:
        """This tick's wall time with real S3 latencies instead of moto's (low, high)."""
        own = self.seconds - self.s3_seconds
        return tuple(  # type: ignore[return-value]
            own + self.lists * lst + self.head_rounds * head
            for lst, head in zip(S3_LIST_SECONDS, S3_HEAD_SECONDS, strict=True)
        )

    def line(self) -> str:
        """One-line summary."""
        low, high = self.real_s3()
        return (
            f"{self.seconds * 1000:7.0f} ms ({self.s3_seconds * 1000:5.0f} in S3 calls, "
            f"{(self.seconds - self.s3_seconds) * 1000:4.0f} own); {self.lists} LIST "
            f"({self.keys_fetched} keys fetched, {self.scan.listed} read) + {self.heads} HEAD "
            f"(~{self.head_rounds:.0f} rounds); "
            f"{len(self.folders)} runs; stopped early: {self.scan.stopped_early}; "
            f"real S3 est. {low * 1000:.0f}-{high * 1000:.0f} ms"
        )


def bare_pages(client: Any, bucket: str, pages: int | None, start_after: str = "") -> int:
    """A bare ListObjectsV2 paginator over the zone: ``pages`` pages (None: all); keys seen."""
    paginator = client.get_paginator("list_objects_v2")
    options: dict[str, Any] = {
        "Bucket": bucket,
        "Prefix": PREFIX,
        "PaginationConfig": {"PageSize": 1000},
    }
    if start_after:
        options["StartAfter"] = start_after
    if pages is not None:
        options["PaginationConfig"]["MaxItems"] = pages * 1000
    seen = 0
    for page in paginator.paginate(**options):
        seen += len(page.get("Contents", []))
    return seen


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_ms(samples: list[float]) -> str:
    """Median in ms, with min and max."""
    return (
        f"median {statistics.median(samples) * 1000:6.0f} ms "
        f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f})"
    )


def verdict(seconds: float) -> str:
    """The absolute goal's verdict."""
    return f"{'meets' if seconds <= GOAL_SECONDS else 'MISSES'} <= {GOAL_SECONDS:.0f} s"


def first_tick(
    sensor: Any, instance: Any, raw: Any, bucket: str, repeats: int
) -> tuple[Tick, float]:
    """The first tick (no cursor) vs a bare paginator over as many pages.

    Returns:
        The last first tick, and the bare paginator's median time per page.
    """
    ticks: list[Tick] = []
    bare: list[float] = []
    pages = Tick(sensor, instance, None).lists  # warm-up: imports, connection pool
    for rep in range(repeats):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for variant in order:
            if variant == 0:
                ticks.append(Tick(sensor, instance, None))
            else:
                bare.append(timed(lambda pages=pages: bare_pages(raw, bucket, pages)))
    tick_median = statistics.median(t.seconds for t in ticks)
    print(f"  first tick      {median_ms([t.seconds for t in ticks])}   {verdict(tick_median)}")
    print(f"  bare paginator  {median_ms(bare)}  over {pages} page(s), as the warm-up tick; "
          f"ratio {tick_median / statistics.median(bare):.2f}x")  # fmt: skip
    print(f"  a first tick:   {ticks[-1].line()}")
    return ticks[-1], statistics.median(bare) / pages


def incremental(
    sensor: Any, instance: Any, raw: Any, bucket: str, cursor: str, keys: Iterator[list[str]],
    repeats: int, label: str = "incremental tick",
) -> str:  # fmt: skip
    """One new complete batch after the backlog, ``repeats`` times: the tick vs one bare LIST.

    Returns:
        The cursor after the last tick.
    """
    from secure_pipeline.ingestion.landing import LandingCursor

    ticks: list[Tick] = []
    bare: list[float] = []
    for rep in range(repeats):
        batch = next(keys)
        for key in batch:
            raw.put_object(Bucket=bucket, Key=key, Body=b"x")
        expected = batch[-1][len(PREFIX) :].split("/")[0] + "/"
        after = LandingCursor.from_json(cursor).after

        def one_list(after: str = after) -> None:
            raw.list_objects_v2(Bucket=bucket, Prefix=PREFIX, MaxKeys=1000, StartAfter=after)

        if rep % 2:
            bare.append(timed(one_list))
        tick = Tick(sensor, instance, cursor)
        if rep % 2 == 0:
            bare.append(timed(one_list))
        assert tick.folders == [expected], (tick.folders, expected)  # exactly that one run
        cursor = tick.cursor
        ticks.append(tick)
    tick_median = statistics.median(t.seconds for t in ticks)
    print(f"  {label}: {median_ms([t.seconds for t in ticks])}   {verdict(tick_median)}"
          f"; each launched exactly its one new batch")  # fmt: skip
    print(f"  bare single LIST {median_ms(bare)} (StartAfter = cursor); "
          f"ratio {tick_median / statistics.median(bare):.2f}x")  # fmt: skip
    print(f"  one such tick:   {ticks[-1].line()}")
    return cursor


def drain(sensor: Any, instance: Any, cursor: str | None, max_ticks: int) -> list[Tick]:
    """Ticks from ``cursor`` until one reaches the end of the zone (or ``max_ticks``)."""
    ticks: list[Tick] = []
    while len(ticks) < max_ticks:
        ticks.append(Tick(sensor, instance, cursor))
        cursor = ticks[-1].cursor
        if not ticks[-1].scan.stopped_early and not ticks[-1].folders:
            break
    return ticks


def dense_zone(sensor: Any, instance: Any, raw: Any) -> None:
    """Run-budget bound: first tick, sampled backlog ticks, incremental ticks."""
    from secure_pipeline.ingestion.landing import MAX_PENDING, LandingCursor

    os.environ["SECURE_PIPELINE_LANDING_URI"] = f"s3://{DENSE_BUCKET}/{PREFIX}"
    print(f"\ndense zone: {DENSE_FOLDERS:,} complete batch folders x 3 keys "
          f"= {DENSE_FOLDERS * 3:,} objects")  # fmt: skip
    _, page_seconds = first_tick(sensor, instance, raw, DENSE_BUCKET, repeats=4)

    samples: dict[str, list[Tick]] = {}
    for label, start in (("start", 0), ("middle", DENSE_FOLDERS // 2),
                         ("end", DENSE_FOLDERS - 4 * 25)):  # fmt: skip
        cursor = LandingCursor(after=dense_keys(start - 1)[-1] if start else "").to_json()
        samples[label] = drain(sensor, instance, cursor, max_ticks=5)
        folders = [f for t in samples[label] for f in t.folders]
        assert folders == [dense_folder(start + i) for i in range(len(folders))], label
    end = samples["end"]
    assert [len(t.folders) for t in end] == [25] * 4 + [0]  # then caught up: nothing left
    assert not end[-1].scan.stopped_early
    full = [t for ts in samples.values() for t in ts if t.folders]
    assert all((t.lists, t.heads) == (1, 50) for t in full)
    ticks_needed = math.ceil(DENSE_FOLDERS / 25)
    total = ticks_needed * statistics.median(t.seconds for t in full)
    pages = math.ceil(DENSE_FOLDERS * 3 / 1000)
    lows, highs = zip(*(t.real_s3() for t in full), strict=True)
    print(f"  backlog tick    {median_ms([t.seconds for t in full])} over {len(full)} sampled "
          f"ticks (start, middle, end); each 25 runs, 1 LIST (1000 keys fetched, "
          f"~76 read), 50 HEAD")  # fmt: skip
    print(f"  whole backlog   {ticks_needed:,} ticks of 25 runs ~ {total:,.0f} s of tick time "
          f"(extrapolated); at one tick per {60} s: {ticks_needed / 60:.1f} h")  # fmt: skip
    print(f"  bare paginator  ~{pages * page_seconds:,.0f} s over all {pages} pages (measured "
          f"page x {pages}); ratio {total / (pages * page_seconds):.1f}x: bound by the run "
          f"budget (25 runs, 50 HEADs a tick), not by listing")  # fmt: skip
    print(f"  real S3 est.    {statistics.median(lows) * 1000:.0f}-"
          f"{statistics.median(highs) * 1000:.0f} ms per backlog tick: the 50 sequential "
          f"HEADs dominate")  # fmt: skip
    new = (dense_keys(DENSE_FOLDERS + i) for i in range(20))
    caught_up = incremental(sensor, instance, raw, DENSE_BUCKET, end[-1].cursor, new, repeats=5)

    # Worst case once caught up: MAX_PENDING half-uploaded batches (adult.data only), each
    # re-checked by HEAD on every tick, plus one new complete batch.
    pending = {}
    for index in range(MAX_PENDING):
        folder = dense_folder(-1 - index)  # sorts before the cursor: not listed again
        raw.put_object(Bucket=DENSE_BUCKET, Key=f"{PREFIX}{folder}adult.data", Body=b"x")
        pending[folder] = time.time()
    cursor = LandingCursor.from_json(caught_up)
    assert cursor.pending == {}
    cursor.pending = pending
    incremental(sensor, instance, raw, DENSE_BUCKET, cursor.to_json(), new, repeats=3,
                label=f"with {MAX_PENDING} pending")  # fmt: skip


def sparse_zone(sensor: Any, instance: Any, raw: Any) -> None:
    """Time-budget bound: first tick, the whole backlog, incremental ticks."""
    os.environ["SECURE_PIPELINE_LANDING_URI"] = f"s3://{SPARSE_BUCKET}/{PREFIX}"
    total_keys = SPARSE_FOLDERS * (SPARSE_PARTS + 2)
    print(f"\nsparse zone: {SPARSE_FOLDERS} batch folders x (2 source files + {SPARSE_PARTS} "
          f"extracts) = {total_keys:,} objects")  # fmt: skip
    first_tick(sensor, instance, raw, SPARSE_BUCKET, repeats=3)

    # the whole backlog, then the bare paginator over the whole zone (once each: ~45 s apiece)
    started = time.perf_counter()
    ticks = drain(sensor, instance, None, max_ticks=200)
    backlog = time.perf_counter() - started
    bare = timed(lambda: bare_pages(raw, SPARSE_BUCKET, None))
    folders = [f for t in ticks for f in t.folders]
    assert folders == [sparse_folder(i) for i in range(SPARSE_FOLDERS)]  # each once, in order
    assert len({k for t in ticks for k in t.run_keys}) == SPARSE_FOLDERS
    keys = [t.keys_fetched for t in ticks]
    print(f"  whole backlog   {len(ticks)} ticks, {backlog:.1f} s; "
          f"{sum(t.lists for t in ticks)} LIST + {sum(t.heads for t in ticks)} HEAD; "
          f"keys fetched per tick median {statistics.median(keys):.0f} "
          f"(min {min(keys)}, max {max(keys)}); runs per tick "
          f"{dict(sorted(Counter(len(t.folders) for t in ticks).items()))}")  # fmt: skip
    print(f"  slowest tick    {max(ticks, key=lambda t: t.seconds).line()}")
    print(f"  bare paginator  {bare * 1000:6.0f} ms over all {total_keys:,} keys; backlog ratio "
          f"{backlog / bare:.2f}x")  # fmt: skip
    lows, highs = zip(*(t.real_s3() for t in ticks), strict=True)
    print(f"  real S3 est.    all ticks' work {sum(lows):.1f}-{sum(highs):.1f} s (own time + "
          f"LIST/HEAD latencies): the 1.5 s budget would cut it into "
          f"~{math.ceil(sum(lows) / 1.5)}-{math.ceil(sum(highs) / 1.5)} ticks")  # fmt: skip
    new = (sparse_keys(SPARSE_FOLDERS + i)[:2] for i in range(10))
    incremental(sensor, instance, raw, SPARSE_BUCKET, ticks[-1].cursor, new, repeats=5)


def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ["AWS_REGION"] = "us-east-1"
    os.environ["SECURE_PIPELINE_LANDING_URI"] = f"s3://{DENSE_BUCKET}/{PREFIX}"
    server, endpoint = start_server()
    os.environ["SECURE_PIPELINE_S3_ENDPOINT"] = endpoint
    try:
        import dagster as dg

        from secure_pipeline.environment import Environment
        from secure_pipeline.reference.adult import adult_pipeline
        from secure_pipeline.storage.s3 import make_s3_client

        instrument()
        pipeline = adult_pipeline()
        spec = pipeline.orchestration
        print(f"sensor settings: max {spec.landing_max_runs_per_tick} runs and "
              f"{spec.landing_tick_seconds} s of listing per tick, every "
              f"{spec.landing_interval_seconds} s")  # fmt: skip
        sensor = pipeline.build_definitions(Environment.LOCAL).resolve_sensor_def(
            "adult_landing_zone"
        )
        raw = make_s3_client(endpoint, "us-east-1")  # the bare side: same client settings
        client_seconds = [timed(lambda: make_s3_client(endpoint, "us-east-1")) for _ in range(5)]
        print(f"boto3 client creation (once per tick): {median_ms(client_seconds)}")
        with dg.instance_for_test() as instance:
            dense_zone(sensor, instance, raw)
            sparse_zone(sensor, instance, raw)
        print(f"\nreal S3 estimates assume {S3_LIST_SECONDS[0] * 1000:.0f}-"
              f"{S3_LIST_SECONDS[1] * 1000:.0f} ms per LIST page and "
              f"{S3_HEAD_SECONDS[0] * 1000:.0f}-{S3_HEAD_SECONDS[1] * 1000:.0f} ms per HEAD, "
              "plus the tick's measured own (non-S3) time")  # fmt: skip
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main()
