"""Canary analysis on the metrics pages real model-server slots produce."""

import random

import pytest
from prometheus_client import generate_latest

from secure_pipeline.promotion.canary import CanaryPolicy, judge, parse_metrics
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.serving.server import ModelService

POLICY = CanaryPolicy(min_requests=100)


def _slot(name: str) -> ModelService:
    """A slot's metrics registry (the model itself is not needed to produce its page)."""
    service = ModelService(adult_pipeline(), "models:/adult/1", name)
    service.info.info({"slot": name, "model_sha256": name * 8})
    return service


def _traffic(
    service: ModelService, n: int, *, errors: int = 0, latency: float = 0.004, score=0.3
) -> None:
    import numpy as np

    rng = random.Random(n)
    for i in range(n):
        code = "500" if i < errors else "200"
        service.observe_request("/predict", code, latency * rng.uniform(0.8, 1.2))
        if code == "200":
            value = score() if callable(score) else score
            value = min(max(value + rng.uniform(-0.05, 0.05), 0.0), 1.0)
            service.scores.observe(service.model_labels(), np.array([value]))


def _page(service: ModelService):
    return parse_metrics(generate_latest(service.registry).decode())


def test_parse_reads_what_a_slot_reports() -> None:
    slot = _slot("green")
    _traffic(slot, 40, errors=4)
    metrics = _page(slot)
    assert metrics.requests == 40
    assert metrics.errors == 4
    assert metrics.model_sha256 == "green" * 8
    assert 0.003 < metrics.p95 < 0.006
    with pytest.raises(ValueError, match="not the metrics"):
        parse_metrics("# nothing here\nother_metric 1.0\n")


def test_parse_sums_over_pipeline_slot_and_model_version_labels() -> None:
    """Answers before the model loaded carry model_version "", later ones the version."""
    slot = _slot("green")
    _traffic(slot, 10, errors=10)  # 503s while verifying: no version yet
    slot.version = "7"
    _traffic(slot, 30, errors=3)
    text = generate_latest(slot.registry).decode()
    assert 'model_version="7"' in text
    assert 'model_version=""' in text
    metrics = parse_metrics(text)
    assert (metrics.requests, metrics.errors) == (40, 13)
    assert metrics.latency[-1] == (float("inf"), 40.0)
    assert metrics.scores[-1][1] == 27.0


def test_a_healthy_canary_passes() -> None:
    live, canary = _slot("blue"), _slot("green")
    _traffic(live, 900)
    _traffic(canary, 120)
    verdict = judge(_page(live), _page(canary), POLICY)
    assert verdict.passed, verdict.reasons
    assert verdict.figures["canary_requests"] == 120


def test_a_canary_with_errors_fails_even_when_the_live_history_is_long() -> None:
    live, canary = _slot("blue"), _slot("green")
    _traffic(live, 10_000)  # before the canary
    before_live, before_canary = _page(live), _page(canary)
    _traffic(live, 900)
    _traffic(canary, 120, errors=12)
    verdict = judge(_page(live).since(before_live), _page(canary).since(before_canary), POLICY)
    assert not verdict.passed
    assert "error rate 10.0% on the canary vs 0.0%" in verdict.reasons[0]


def test_too_little_canary_traffic_is_not_a_pass() -> None:
    live, canary = _slot("blue"), _slot("green")
    _traffic(live, 500)
    _traffic(canary, 30)
    verdict = judge(_page(live), _page(canary), POLICY)
    assert not verdict.passed
    assert verdict.reasons[0].startswith("inconclusive: the canary answered 30 requests")


def test_a_slower_canary_fails_and_bucket_noise_does_not() -> None:
    live, slow, close = _slot("blue"), _slot("green"), _slot("green")
    _traffic(live, 500, latency=0.004)
    _traffic(slow, 150, latency=0.08)
    _traffic(close, 150, latency=0.0055)  # 1.4x, a millisecond or two: noise
    assert "p95 latency" in judge(_page(live), _page(slow), POLICY).reasons[0]
    assert judge(_page(live), _page(close), POLICY).passed


def test_shifted_predictions_fail() -> None:
    live, canary = _slot("blue"), _slot("green")
    _traffic(live, 500, score=0.2)
    _traffic(canary, 150, score=0.75)
    verdict = judge(_page(live), _page(canary), POLICY)
    assert not verdict.passed
    assert "prediction distribution shifted" in verdict.reasons[0]


def test_reports_of_different_models_are_not_compared() -> None:
    before = _page(_slot("blue"))
    after = _page(_slot("green"))
    with pytest.raises(ValueError, match="cannot be compared"):
        after.since(before)


def test_policy_settings_are_checked() -> None:
    bad = CanaryPolicy(canary_weight=80, min_requests=0, max_p95_ratio=0.5)
    assert len(bad.problems()) == 3
