"""Canary analysis: judge a new slot against the live one from their own metrics.

Both slots report cumulative Prometheus metrics (`secure_pipeline.serving.server`). The
analysis takes one snapshot of each when the canary starts taking traffic and another when
enough canary requests were seen, and compares the *differences*, so the live slot's history
does not dilute what happened during the canary:

* error rate: the share of ``/predict`` answers that were not 2xx (a model that changed its
  input contract, a misconfigured release or a crashing one all show here);
* latency: the canary's p95 against the live slot's (both interpolated from the same buckets);
* predictions: the population stability index between the two slots' score distributions
  (they see the same traffic mix, so a shift is the model's doing).

Too little canary traffic within the observation window is not a pass.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from secure_pipeline.spec import CanaryPolicy

PREDICT = "/predict"


@dataclass(frozen=True)
class SlotMetrics:
    """What one slot reported (cumulative), or the difference of two reports.

    Attributes:
        requests: ``/predict`` answers.
        errors: Those that were not 2xx.
        latency: Cumulative counts per latency bucket upper bound (seconds), +Inf included.
        scores: Cumulative counts per score bucket upper bound.
        model_sha256: The model digest the slot serves.
    """

    requests: int
    errors: int
    latency: tuple[tuple[float, float], ...] = ()
    scores: tuple[tuple[float, float], ...] = ()
    model_sha256: str | None = None

    def since(self, earlier: "SlotMetrics") -> "SlotMetrics":
        """What happened between ``earlier`` and this report."""
        if earlier.model_sha256 and earlier.model_sha256 != self.model_sha256:
            raise ValueError(
                f"the slot now serves {self.model_sha256}, not {earlier.model_sha256}: the "
                "reports cannot be compared"
            )
        return SlotMetrics(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            _minus(self.latency, earlier.latency),
            _minus(self.scores, earlier.scores),
            self.model_sha256,
        )

    @property
    def error_rate(self) -> float:
        """Share of answers that were not 2xx (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95(self) -> float | None:
        """95th percentile latency, interpolated within its bucket (None without requests)."""
        return _quantile(self.latency, 0.95)


def _minus(
    later: tuple[tuple[float, float], ...], earlier: tuple[tuple[float, float], ...]
) -> tuple[tuple[float, float], ...]:
    before = dict(earlier)
    return tuple((bound, count - before.get(bound, 0.0)) for bound, count in later)


def _quantile(buckets: tuple[tuple[float, float], ...], q: float) -> float | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    target = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if math.isinf(bound):
                return lower_bound  # beyond the largest finite bucket: its bound
            width = count - lower_count
            share = (target - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def parse_metrics(text: str) -> SlotMetrics:
    """Read a slot's ``/metrics`` page.

    Every series is summed over the labels the canary does not compare by (``pipeline``,
    ``slot``, ``model_version``): one slot's page is one slot.

    Raises:
        ValueError: When the page is not a slot's metrics.
    """
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0.0
    latency: dict[float, float] = {}
    scores: dict[float, float] = {}
    model = None
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "secure_pipeline_ready":
                seen = True
            elif sample.name == "secure_pipeline_requests_total":
                if labels.get("route") == PREDICT:
                    requests += sample.value
                    if not labels.get("code", "").startswith("2"):
                        errors += sample.value
            elif sample.name == "secure_pipeline_request_duration_seconds_bucket":
                if labels.get("route") == PREDICT:
                    bound = float(labels["le"])
                    latency[bound] = latency.get(bound, 0.0) + sample.value
            elif sample.name == "secure_pipeline_prediction_score_bucket":
                bound = float(labels["le"])
                scores[bound] = scores.get(bound, 0.0) + sample.value
            elif sample.name == "secure_pipeline_model_info":
                model = labels.get("model_sha256") or None
    if not seen:
        raise ValueError("not the metrics of a secure_pipeline model server")
    return SlotMetrics(
        int(requests),
        int(errors),
        tuple(sorted(latency.items())),
        tuple(sorted(scores.items())),
        model,
    )


def score_psi(live: SlotMetrics, canary: SlotMetrics) -> float | None:
    """Population stability index between two slots' score distributions."""
    if not live.scores or not canary.scores or not live.requests or not canary.requests:
        return None

    def shares(buckets: tuple[tuple[float, float], ...]) -> list[float]:
        counts, previous = [], 0.0
        for _, cumulative in buckets:
            counts.append(max(cumulative - previous, 0.0))
            previous = cumulative
        total = sum(counts)
        # A floor keeps an empty bin from dividing by zero, as PSI implementations do.
        return [max(c / total, 1e-4) if total else 0.0 for c in counts]

    a, b = shares(live.scores), shares(canary.scores)
    if not any(a) or not any(b):
        return None
    return float(sum((y - x) * math.log(y / x) for x, y in zip(a, b, strict=False)))


@dataclass(frozen=True)
class CanaryVerdict:
    """The outcome of a canary.

    Attributes:
        passed: Whether the canary may take all the traffic.
        reasons: Why not (empty when passed).
        figures: What was measured, for metadata and the audit record.
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def judge(live: SlotMetrics, canary: SlotMetrics, policy: CanaryPolicy) -> CanaryVerdict:
    """Compare what both slots did during the canary (differences of two reports)."""
    reasons = []
    live_p95, canary_p95 = live.p95, canary.p95
    psi = score_psi(live, canary)
    figures: dict[str, Any] = {
        "live_requests": live.requests,
        "canary_requests": canary.requests,
        "live_error_rate": round(live.error_rate, 4),
        "canary_error_rate": round(canary.error_rate, 4),
        "live_p95_ms": None if live_p95 is None else round(live_p95 * 1000, 2),
        "canary_p95_ms": None if canary_p95 is None else round(canary_p95 * 1000, 2),
        "score_psi": None if psi is None else round(psi, 4),
    }
    if canary.requests < policy.min_requests:
        reasons.append(
            f"inconclusive: the canary answered {canary.requests} requests, the policy needs "
            f"{policy.min_requests}"
        )
    rate = canary.error_rate
    if rate > policy.max_error_rate and rate > live.error_rate + policy.max_error_rate_increase:
        reasons.append(
            f"error rate {rate:.1%} on the canary vs {live.error_rate:.1%} on the live slot "
            f"(limit {policy.max_error_rate:.1%}, or +{policy.max_error_rate_increase:.1%})"
        )
    if live_p95 is not None and canary_p95 is not None:
        slow = canary_p95 > live_p95 * policy.max_p95_ratio
        if slow and canary_p95 - live_p95 > policy.min_p95_slack_seconds:
            reasons.append(
                f"p95 latency {canary_p95 * 1000:.1f} ms on the canary vs {live_p95 * 1000:.1f} "
                f"ms live (limit {policy.max_p95_ratio:g}x)"
            )
    if psi is not None and psi > policy.max_score_psi:
        reasons.append(
            f"prediction distribution shifted: PSI {psi:.3f} between the slots' scores (limit "
            f"{policy.max_score_psi:g})"
        )
    return CanaryVerdict(not reasons, reasons, figures)


def metrics_by_slot(pages: Mapping[str, str]) -> dict[str, SlotMetrics]:
    """Parse each slot's metrics page."""
    return {slot: parse_metrics(text) for slot, text in pages.items()}
