"""Helpers shared by the benchmark scripts: interleaved repetitions and a ratio report."""

import os
import statistics
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
