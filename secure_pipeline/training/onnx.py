"""The ONNX copy of a model: conversion with skl2onnx, scoring with onnxruntime.

The graph has ONE INPUT PER MODEL INPUT COLUMN, named exactly like the column, in the order of
``training.models.model_inputs(pipeline)[0].columns`` (numeric first), each of shape
``[None, 1]``:

* numeric features: ``tensor(double)`` (float64). The skops model computes in float64; float32
  inputs would round every feature before scaling and could move a probability by more than
  the equivalence tolerance, so the graph takes doubles and computes in doubles;
* categorical codes: ``tensor(int64)``.

Outputs: ``label`` (``tensor(int64)``, ``[None]``) and ``probabilities`` (``tensor(double)``,
``[None, 2]``, a plain tensor, no ZipMap); column 1 is the positive class.

`convert` returns None and the reason when skl2onnx cannot convert the estimator: the
model is then served through skops only and registration goes on. `onnx_scores` loads a graph
from bytes (never a file path, never pickle) and returns the positive-class probabilities.
"""

import logging
from typing import TYPE_CHECKING, Any

from secure_pipeline.spec import PipelineSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

_LOG = logging.getLogger(__name__)

ONNX_OPSET = 17
PROBABILITIES = "probabilities"
# Largest accepted |p_onnx - p_skops| on any evaluated row (double-precision inputs).
TOLERANCE = 1e-6
NUMERIC_DTYPE = "float64"
CATEGORICAL_DTYPE = "int64"


def input_dtypes(pipeline: PipelineSpec) -> dict[str, str]:
    """The dtype of each graph input, by column name, in graph order."""
    from secure_pipeline.training.models import model_inputs

    inputs, _ = model_inputs(pipeline)
    return {
        **dict.fromkeys(inputs.numeric, NUMERIC_DTYPE),
        **dict.fromkeys(inputs.categorical, CATEGORICAL_DTYPE),
    }


def to_onnx(model: Any, pipeline: PipelineSpec) -> bytes | None:
    """Convert a fitted model pipeline to ONNX, or None when skl2onnx does not support it.

    Args:
        model: The fitted scikit-learn pipeline (``preprocess`` then ``model``).
        pipeline: The spec (its model inputs name the graph inputs).

    Returns:
        The serialized graph, or None (reason logged) for an estimator skl2onnx cannot convert.
    """
    data, reason = convert(model, pipeline)
    if data is None:
        _LOG.warning("%s", reason)
    return data


def convert(model: Any, pipeline: PipelineSpec) -> tuple[bytes | None, str]:
    """Convert a fitted model pipeline to ONNX, saying why not when it cannot be.

    Args:
        model: The fitted scikit-learn pipeline (``preprocess`` then ``model``).
        pipeline: The spec (its model inputs name the graph inputs).

    Returns:
        The serialized graph and "", or None and why there is no copy (the model is then
        served through skops).
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType
    from skl2onnx.common.exceptions import MissingShapeCalculator

    types = [
        (
            name,
            DoubleTensorType([None, 1]) if dtype == NUMERIC_DTYPE else Int64TensorType([None, 1]),
        )
        for name, dtype in input_dtypes(pipeline).items()
    ]
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    named = type(estimator).__name__
    try:
        graph = convert_sklearn(
            model,
            initial_types=types,
            target_opset=ONNX_OPSET,
            options={id(estimator): {"zipmap": False}},
        )
    except (MissingShapeCalculator, RuntimeError, NotImplementedError, TypeError) as exc:
        # skl2onnx names an unsupported estimator with these; the model is then served through
        # skops, which the registration records by leaving the ONNX file out.
        return None, (
            f"no ONNX copy of {named}: skl2onnx cannot convert it ({type(exc).__name__}: "
            f"{str(exc)[:300]}); served through skops"
        )
    outputs = [o.name for o in graph.graph.output]
    if PROBABILITIES not in outputs:
        return (
            None,
            f"no ONNX copy of {named}: the converted graph has outputs {outputs}, no "
            f"{PROBABILITIES}; served through skops",
        )
    data = graph.SerializeToString()
    import onnxruntime as ort

    try:
        # Some converted graphs do not load in onnxruntime (tree ensembles with double
        # inputs): a copy that cannot be served is no copy.
        inference_session(data)
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:  # fmt: skip
        return None, (
            f"no ONNX copy of {named}: onnxruntime does not load the converted graph "
            f"({str(exc)[:300]}); served through skops"
        )
    return data, ""


def inference_session(data: bytes) -> Any:
    """An onnxruntime session of a graph, from its bytes: CPU only, one thread each way.

    One thread per operator and between operators: a model server slot is one process per
    core, and a check shares its process with the run. Load errors are onnxruntime's own.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_scores(data: bytes, columns: "dict[str, np.ndarray]") -> "np.ndarray":
    """Positive-class probabilities of a graph on columns of inputs (one array per column).

    Args:
        data: The serialized graph (verified bytes).
        columns: Every graph input's values, by name; cast to the graph's dtypes.

    Returns:
        One float64 probability per row.
    """
    import numpy as np

    session = inference_session(data)
    feeds = {}
    for spec in session.get_inputs():
        dtype = np.int64 if spec.type == "tensor(int64)" else np.float64
        if spec.type == "tensor(float)":
            dtype = np.float32
        feeds[spec.name] = np.asarray(columns[spec.name]).astype(dtype).reshape(-1, 1)
    (probabilities,) = session.run([PROBABILITIES], feeds)
    return np.asarray(probabilities, dtype=np.float64)[:, 1]


def equivalence(model: Any, data: bytes, frame: "pd.DataFrame") -> dict[str, Any]:
    """Compare the ONNX graph with the model it was converted from, row by row.

    Both score every row of ``frame`` (the model's input columns); they agree when no
    probability differs by more than `TOLERANCE` and no label at 0.5 differs.

    Args:
        model: The loaded scikit-learn model.
        data: The serialized graph.
        frame: The rows to compare on (the evaluation split).

    Returns:
        ``rows``, ``max_abs_diff``, ``label_disagreements``, ``tolerance`` and ``agrees``.
    """
    import numpy as np

    expected = np.asarray(model.predict_proba(frame)[:, 1], dtype=np.float64)
    found = onnx_scores(data, {name: frame[name].to_numpy() for name in frame.columns})
    diff = float(np.max(np.abs(expected - found))) if len(frame) else 0.0
    disagreements = int(np.sum((expected >= 0.5) != (found >= 0.5)))
    return {
        "rows": len(frame),
        "max_abs_diff": diff,
        "label_disagreements": disagreements,
        "tolerance": TOLERANCE,
        "agrees": bool(len(frame) > 0 and diff <= TOLERANCE and disagreements == 0),
    }
