"""Scoring a verified ONNX graph with onnxruntime, without pandas on the request path.

The graph is the one `secure_pipeline.training.onnx` writes: one input per model input column,
named like the column, shape ``[None, 1]`` (numeric ``tensor(double)``, category codes
``tensor(int64)``), and an output ``probabilities`` ``[None, 2]`` whose column 1 is the
positive class. `OnnxPredictor` is built from bytes that already verified (never from a path),
runs on the CPU with one thread per operator and between operators (a slot is one process per
core; the session is `training.onnx.inference_session`'s, as the equivalence check's), and
refuses a graph whose inputs are not exactly the model's input columns with their dtypes: such a
slot must never become ready.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING

from secure_pipeline.errors import IntegrityError

if TYPE_CHECKING:
    import numpy as np

PROBABILITIES = "probabilities"
# onnxruntime's type names of the dtypes the graph may take.
_ORT_TYPES = {"tensor(double)": "float64", "tensor(float)": "float32", "tensor(int64)": "int64"}


class OnnxPredictor:
    """The positive-class scores of a verified ONNX graph.

    Args:
        data: The graph's verified bytes.
        expected: The model's input columns and their dtypes (``float64``, ``float32`` or
            ``int64``), in the model's order.

    Raises:
        IntegrityError: When the bytes are not a loadable graph, or its inputs or outputs are
            not the ones expected (saying which are missing, unexpected or of another type).
    """

    def __init__(self, data: bytes, expected: Mapping[str, str]) -> None:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        from secure_pipeline.training.onnx import inference_session

        try:
            self.session = inference_session(data)
        # onnxruntime's own load errors derive from Exception directly; name them.
        except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail,
                ort_errors.InvalidArgument, RuntimeError, ValueError) as exc:  # fmt: skip
            raise IntegrityError(
                f"the verified ONNX copy does not load in onnxruntime ({type(exc).__name__}); "
                "re-register the model so its ONNX copy is rebuilt"
            ) from None
        found = {i.name: _ORT_TYPES.get(i.type, i.type) for i in self.session.get_inputs()}
        wanted = dict(expected)
        if found != wanted:
            missing = sorted(set(wanted) - set(found))
            extra = sorted(set(found) - set(wanted))
            typed = sorted(n for n in set(found) & set(wanted) if found[n] != wanted[n])
            raise IntegrityError(
                "the ONNX graph's inputs are not the model's input columns: expected "
                f"{wanted}, found {found} (missing {missing}, unexpected {extra}, other dtype "
                f"{typed}); refusing to serve it: rebuild the bundle's ONNX copy"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        if PROBABILITIES not in outputs:
            raise IntegrityError(
                f"the ONNX graph has no output {PROBABILITIES!r} (found {outputs}); refusing "
                "to serve it: rebuild the bundle's ONNX copy"
            )
        self.dtypes = wanted
        self._outputs = [PROBABILITIES]

    def feeds(self, columns: Mapping[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        """The session's input feed: each column as an ``[n, 1]`` array of the graph's dtype."""
        import numpy as np

        return {
            name: np.asarray(columns[name], dtype=dtype).reshape(-1, 1)
            for name, dtype in self.dtypes.items()
        }

    def scores(self, columns: Mapping[str, "np.ndarray"]) -> "np.ndarray":
        """The positive-class probability of each row of ``columns`` (name -> 1-D array)."""
        (probabilities,) = self.session.run(self._outputs, self.feeds(columns))
        return probabilities[:, 1]
