"""The ONNX copy of a model: conversion, equivalence with the skops model, unsupported ones."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.training.models import build_model, model_inputs
from secure_pipeline.training.onnx import TOLERANCE, equivalence, onnx_scores, to_onnx


def _frame(rows: int = 1500) -> tuple[pd.DataFrame, np.ndarray]:
    pipeline = adult_pipeline()
    inputs, catalog = model_inputs(pipeline)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.normal(size=rows) * 10 for c in inputs.numeric})
    for name in inputs.categorical:
        frame[name] = rng.integers(-1, len(catalog[name].categories), size=rows).astype("int64")
    labels = (frame[inputs.numeric[0]] + rng.normal(size=rows) > 0).astype(int).to_numpy()
    return frame, labels


class _Unknown(ClassifierMixin, BaseEstimator):
    """A classifier skl2onnx has never heard of."""

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> "_Unknown":
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return np.tile([0.5, 0.5], (len(x), 1))


def test_the_reference_model_converts_and_agrees_within_tolerance() -> None:
    pipeline = adult_pipeline()
    frame, labels = _frame()
    model = build_model(pipeline).fit(frame, labels)
    data = to_onnx(model, pipeline)
    assert data is not None
    scores = onnx_scores(data, {c: frame[c].to_numpy() for c in frame})
    expected = model.predict_proba(frame)[:, 1]
    assert np.abs(scores - expected).max() <= TOLERANCE
    assert ((scores >= 0.5) == (expected >= 0.5)).all()


def test_an_unsupported_estimator_gives_no_onnx(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = adult_pipeline()
    frame, labels = _frame(200)
    model = build_model(pipeline)
    model.steps[-1] = ("model", _Unknown())
    model.fit(frame, labels)
    assert to_onnx(model, pipeline) is None
    assert "served through skops" in caplog.text


def test_a_copy_that_does_not_match_its_model_is_refused() -> None:
    """A graph converted from another fit (as a faulty converter would emit) does not agree."""
    pipeline = adult_pipeline()
    frame, labels = _frame()
    model = build_model(pipeline).fit(frame, labels)
    other = build_model(pipeline).fit(frame, 1 - labels)
    good, wrong = to_onnx(model, pipeline), to_onnx(other, pipeline)
    assert good is not None
    assert wrong is not None
    assert equivalence(model, good, frame)["agrees"]
    compared = equivalence(model, wrong, frame)
    assert not compared["agrees"]
    assert compared["label_disagreements"] > 0
    assert compared["rows"] == len(frame)
