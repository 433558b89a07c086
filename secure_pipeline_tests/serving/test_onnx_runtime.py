"""The ONNX predictor: the same scores as the scikit-learn model, and a wrong graph refused."""

import numpy as np
import pandas as pd
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from secure_pipeline.errors import IntegrityError
from secure_pipeline.serving.onnx_runtime import OnnxPredictor

EXPECTED = {"age": "float64", "hours": "float64", "band": "int64"}


def _model_and_frame() -> tuple[Pipeline, pd.DataFrame]:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({
        "age": rng.uniform(17, 90, 400), "hours": rng.uniform(1, 99, 400),
        "band": rng.integers(0, 5, 400),
    })  # fmt: skip
    target = (frame["age"] + 10 * frame["band"] > 60).astype(int)
    model = Pipeline([
        ("preprocess", ColumnTransformer([
            ("numeric", StandardScaler(), ["age", "hours"]),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), ["band"]),
        ])),
        ("model", LogisticRegression()),
    ]).fit(frame, target)  # fmt: skip
    return model, frame


def _graph(model: Pipeline, types: list) -> bytes:
    onnx = convert_sklearn(model, initial_types=types, target_opset=17,
                           options={id(model): {"zipmap": False}})  # fmt: skip
    return onnx.SerializeToString()


GOOD = [("age", DoubleTensorType([None, 1])), ("hours", DoubleTensorType([None, 1])),
        ("band", Int64TensorType([None, 1]))]  # fmt: skip


def test_scores_match_the_sklearn_model() -> None:
    model, frame = _model_and_frame()
    predictor = OnnxPredictor(_graph(model, GOOD), EXPECTED)
    got = predictor.scores({name: frame[name].to_numpy() for name in EXPECTED})
    np.testing.assert_allclose(got, model.predict_proba(frame)[:, 1], atol=1e-6)
    one = predictor.scores({name: frame[name].to_numpy()[:1] for name in EXPECTED})
    assert one.shape == (1,)


@pytest.mark.parametrize(
    "types",
    [
        # a column renamed: the graph would score something else under the model's name
        [("age", DoubleTensorType([None, 1])), ("hours_per_week", DoubleTensorType([None, 1])),
         ("band", Int64TensorType([None, 1]))],
        # a code fed as a double: another dtype than the model's
        [("age", DoubleTensorType([None, 1])), ("hours", DoubleTensorType([None, 1])),
         ("band", DoubleTensorType([None, 1]))],
    ],
)  # fmt: skip
def test_a_graph_with_other_inputs_is_refused(types: list) -> None:
    model, frame = _model_and_frame()
    if types[2][0] == "band" and isinstance(types[2][1], DoubleTensorType):
        frame = frame.assign(band=frame["band"].astype("float64"))
        model.fit(frame, (frame["age"] > 50).astype(int))
    if types[1][0] == "hours_per_week":
        frame = frame.rename(columns={"hours": "hours_per_week"})
        model = Pipeline([
            ("preprocess", ColumnTransformer([
                ("numeric", StandardScaler(), ["age", "hours_per_week"]),
                ("categorical", OneHotEncoder(handle_unknown="ignore"), ["band"]),
            ])),
            ("model", LogisticRegression()),
        ]).fit(frame, (frame["age"] > 50).astype(int))  # fmt: skip
    with pytest.raises(IntegrityError, match="inputs are not the model's input columns"):
        OnnxPredictor(_graph(model, types), EXPECTED)


def test_bytes_that_are_not_a_graph_are_refused() -> None:
    with pytest.raises(IntegrityError, match="does not load"):
        OnnxPredictor(b"not a graph", EXPECTED)
