"""Helpers shared by the benchmark scripts: interleaved repetitions and a ratio report."""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, alternating them so drift hits all alike."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]], baseline: str, goal: float | None) -> float:
    """Print medians and the ratio of every variant to the baseline; return the worst ratio."""
    base = statistics.median(times[baseline])
    print(f"\n{title}")
    worst = 0.0
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = median / base
        if name != baseline:
            worst = max(worst, ratio)
        print(f"  {name:<44} median {median * 1000:9.1f} ms   ratio {ratio:5.2f}x")
    if goal is not None:
        verdict = "meets" if worst <= goal else "MISSES"
        print(f"  goal <= {goal:.2f}x: {verdict} ({worst:.2f}x)")
    return worst


def temporary_home(prefix: str) -> tuple[Path, Path]:
    """A work directory under the current one with a Dagster/secure_pipeline home in it.

    The environment points at the home (SQLite instance) and at development keys of its own.

    Returns:
        ``(work, home)``; the caller removes ``work``.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=Path.cwd()))
    home = work / "home"
    home.mkdir()
    os.environ.update(
        SECURE_PIPELINE_HOME=str(home), DAGSTER_HOME=str(home),
        SECURE_PIPELINE_DEV_KEYS=str(work / "dev-keys"),
    )  # fmt: skip
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    return work, home


def moto_server() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process on a free loopback port: (process, endpoint)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                server.terminate()
                raise
            time.sleep(0.1)
