"""Helpers shared by the benchmark scripts: interleaved repetitions and a ratio report."""

import statistics
import time
from collections.abc import Callable


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
