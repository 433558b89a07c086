"""The feature table, derived from validated rows as the `FeatureSpec` declares.

Encodings are fixed by the schema, not learned from the batch: a category's code is its index
in the schema's allowed values (-1 when missing), so the same value has the same code in every
snapshot and drift between snapshots is measured on comparable columns.

Training and serving run the same encoding code. Each side first turns its source columns into
one numpy form per column type (`SourceValues`): training from validated pandas columns
(`column_values`), the model server from a request's validated values (`request_values`).
`feature_values` then derives every feature from those arrays, so a value cannot be encoded
one way at training time and another way when it is scored.

The numpy forms:

* ``int``, ``float``, ``bool``: ``float64``, NaN when missing (``True`` is 1.0).
* ``category``, ``string``: `Texts`, the distinct values and each row's index into them (a
  pandas categorical or factorized column as it is, a request's values one per row).
* ``date``, ``datetime``: ``datetime64[us]`` (time-zone-naive), NaT when missing.

Derived features (`DerivedColumn`):

* ``map``: the source value, as text, to the code of its category in ``output_categories``
  order; a value not listed gets ``default``'s code (-1 without a default), a missing value
  -1. Category and string values are their own text, integers their decimal digits (``7``,
  ``-3``), booleans ``true`` / ``false``.
* ``band``: the index of the band a number falls in (``searchsorted(cuts, x, "right")``, so a
  value equal to a cut point opens the next band), -1 when missing.
* ``date_difference``: ``end`` minus ``source`` in days (fractional for datetimes) or years
  of 365.25 days, NaN when either date is missing.
"""

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from secure_pipeline.spec import (
    LABEL_COLUMN,
    RESERVED_SPLIT_COLUMN,
    Column,
    Feature,
    PipelineSpec,
    feature_catalog,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

_NUMERIC_TYPES = ("int", "float", "bool")
_DATE_TYPES = ("date", "datetime")
_DAYS_PER_YEAR = 365.25
# Dates are held in microseconds: Python's own resolution (request values), and a range of
# ±290,000 years, where nanoseconds would stop at 1677 and 2262.
_DATE_UNIT = "datetime64[us]"


@dataclass(frozen=True)
class Texts:
    """A text column as its distinct values and each row's index into them.

    Attributes:
        values: The distinct values (``str``; ``None`` counts as missing).
        rows: Each row's index into ``values``, -1 when missing; ``None`` when ``values`` are
            the rows themselves (a request's values, one per row: nothing to look up twice).
    """

    values: Sequence[Any]
    rows: "np.ndarray | None" = None


SourceValues = Union["np.ndarray", Texts]


def build_features(frame: "pd.DataFrame", pipeline: PipelineSpec) -> "pd.DataFrame":
    """Derive the feature table from validated rows.

    Args:
        frame: Validated rows (schema columns plus ``split``).
        pipeline: The spec.

    Returns:
        One column per `Feature`, then ``label`` (0/1, when the data is labelled) and
        ``split``, on the index of ``frame``.
    """
    import pandas as pd

    catalog = feature_catalog(pipeline)
    sources = _training_sources(frame, pipeline, [s for f in catalog for s in f.sources])
    columns: dict[str, object] = {f.name: feature_values(f, sources, pipeline) for f in catalog}
    schema = pipeline.schema
    if schema.label is not None and schema.positive_label is not None:
        columns[LABEL_COLUMN] = (frame[schema.label] == schema.positive_label).astype("int8")
    columns[RESERVED_SPLIT_COLUMN] = frame[RESERVED_SPLIT_COLUMN].astype("string")
    return pd.DataFrame(columns, index=frame.index)


def feature_column(feature: Feature, frame: "pd.DataFrame", pipeline: PipelineSpec) -> "np.ndarray":
    """One feature's values from validated rows (every column it reads must be in ``frame``)."""
    return feature_values(feature, _training_sources(frame, pipeline, feature.sources), pipeline)


def column_values(values: "pd.Series", column: Column) -> SourceValues:
    """A validated pandas column in the numpy form of its type (see the module docstring).

    Raises:
        TypeError: When a date column does not hold dates (validation parses them).
    """
    import numpy as np
    import pandas as pd

    if column.dtype in _NUMERIC_TYPES:
        return values.to_numpy(dtype="float64", na_value=np.nan)
    if column.dtype in _DATE_TYPES:
        return _date_array(values, column)
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Look up each category once, not each row: the codes index into them.
        return Texts(list(values.cat.categories), values.cat.codes.to_numpy())
    rows, distinct = pd.factorize(values)
    return Texts(list(distinct), rows)


def request_values(values: Sequence[Any], dtype: str) -> SourceValues:
    """A request's validated values of one column in the numpy form of its type.

    Args:
        values: One value per row: numbers or booleans, strings, or ``datetime.date`` /
            time-zone-naive ``datetime.datetime`` for date columns; ``None`` when missing.
        dtype: The column's type.
    """
    import numpy as np

    if dtype in _NUMERIC_TYPES:
        # numpy reads None as NaN and a bool as 1.0 / 0.0 for a float array, as float() would.
        return np.array(values, dtype="float64")
    if dtype in _DATE_TYPES:
        return np.array(values, dtype=_DATE_UNIT)  # None becomes NaT
    return Texts(values)


def feature_values(
    feature: Feature, sources: Mapping[str, SourceValues], pipeline: PipelineSpec
) -> "np.ndarray":
    """One feature's values from its source columns in numpy form (training and serving).

    Args:
        feature: The feature.
        sources: At least every column in ``feature.sources``, as `column_values` or
            `request_values` gives them.
        pipeline: The spec.

    Returns:
        ``float64`` for numeric features, ``int16`` codes (-1 missing) for categorical ones.
    """
    import numpy as np

    derived = feature.derivation
    if derived is not None:
        source = sources[derived.source]
        if derived.kind == "map":
            dtype = _column(pipeline, derived.source).dtype
            texts = source if isinstance(source, Texts) else _number_texts(source, dtype)
            index, unlisted = _map_index(derived.values, derived.output_categories,
                                         derived.default)  # fmt: skip
            return _codes(texts, index, unlisted)
        if derived.kind == "band":
            return _bands(source, derived.cuts)
        end = sources[str(derived.end)]
        days = (end - source) / np.timedelta64(1, "D")  # NaN where either is NaT
        return days / _DAYS_PER_YEAR if derived.unit == "years" else days
    source = sources[feature.source]
    if feature.name == feature.source:
        if feature.kind == "categorical":
            return _codes(source, _category_index(feature.categories), -1)
        return source
    if feature.kind == "categorical":  # a band of FeatureSpec.bands
        return _bands(source, pipeline.features.bands[feature.source])
    return np.log1p(np.clip(source, 0, None))  # log1p of a non-negative amount


def describe_derivation(feature: Feature, pipeline: PipelineSpec) -> str:
    """How a feature is computed, in words (shown in the feature catalog)."""
    derived = feature.derivation
    if derived is None:
        if feature.name == feature.source and feature.kind == "categorical":
            return f"code of {feature.source}"
        if feature.name == feature.source:
            return f"{feature.source} as a number"
        if feature.kind == "categorical":
            cuts = pipeline.features.bands[feature.source]
            return f"bands of {feature.source} cut at {', '.join(f'{c:g}' for c in cuts)}"
        return f"log(1 + {feature.source}), negative amounts as 0"
    if derived.kind == "map":
        pairs = ", ".join(f"{k} -> {v}" for k, v in derived.values)
        if derived.default is not None:
            pairs += f", any other -> {derived.default}"
        elif _column(pipeline, derived.source).dtype != "category":  # a category maps them all
            pairs += ", any other -> missing"
        words = f"map of {derived.source} ({pairs})"
    elif derived.kind == "band":
        words = f"bands of {derived.source} cut at {', '.join(f'{c:g}' for c in derived.cuts)}"
    else:
        words = f"{derived.unit} from {derived.source} to {derived.end}"
    return f"{words}: {derived.description}" if derived.description else words


def _training_sources(
    frame: "pd.DataFrame", pipeline: PipelineSpec, names: Sequence[str]
) -> dict[str, SourceValues]:
    return {
        name: column_values(frame[name], _column(pipeline, name)) for name in dict.fromkeys(names)
    }


def _column(pipeline: PipelineSpec, name: str) -> Column:
    return next(c for c in pipeline.schema.columns if c.name == name)


def _date_array(values: "pd.Series", column: Column) -> "np.ndarray":
    """A validated date column as time-zone-naive microseconds, NaT when missing."""
    import datetime as dt

    import numpy as np
    import pandas as pd

    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_dtype(values.dtype):
        # Parquet dates can read back as datetime.date objects; anything else (text) means the
        # column was not validated as a date, and guessing its format here could be wrong.
        present = values.dropna()
        if not all(isinstance(v, dt.date) for v in present):
            raise TypeError(
                f"date column {column.name!r} holds {values.dtype} values, expected dates: "
                "build features from the validated table, where dates are parsed"
            )
        if any(isinstance(v, dt.datetime) and v.tzinfo is not None for v in present):
            values = pd.to_datetime(values, utc=True).dt.tz_localize(None)
    return values.to_numpy(dtype=_DATE_UNIT, na_value=np.datetime64("NaT"))


def _codes(texts: Texts, index: Mapping[str, int], unlisted: int) -> "np.ndarray":
    """Each row's code: ``index`` of its text, ``unlisted`` if not listed, -1 when missing."""
    import numpy as np

    # A list, not a generator into fromiter: as fast on many values, twice on a request's one.
    table = np.array(
        [-1 if v is None else index.get(v, unlisted) for v in texts.values], dtype="int16"
    )
    if texts.rows is None:
        return table
    return np.append(table, np.int16(-1))[texts.rows]  # row index -1 picks the appended -1


def _number_texts(numbers: "np.ndarray", dtype: str) -> Texts:
    """Numbers as the texts a map's keys are written in (``7``, ``true``), once per value."""
    import numpy as np

    distinct, rows = np.unique(numbers, return_inverse=True)
    if dtype == "bool":
        texts = [None if math.isnan(v) else "true" if v else "false" for v in distinct.tolist()]
    else:
        texts = [None if math.isnan(v) else str(int(v)) for v in distinct.tolist()]
    return Texts(texts, rows.reshape(-1))


def _bands(numbers: "np.ndarray", cuts: Sequence[float]) -> "np.ndarray":
    import numpy as np

    band = np.searchsorted(np.asarray(cuts, dtype="float64"), numbers, side="right")
    return np.where(np.isnan(numbers), -1, band).astype("int16")


@functools.lru_cache(maxsize=256)
def _category_index(categories: tuple[str, ...]) -> Mapping[str, int]:
    # Cached: the model server encodes every request with the same few category lists.
    return {category: code for code, category in enumerate(categories)}


@functools.lru_cache(maxsize=256)
def _map_index(
    values: tuple[tuple[str, str], ...], categories: tuple[str, ...], default: str | None
) -> tuple[Mapping[str, int], int]:
    """A map's source text to output code, and the code of a value it does not list."""
    codes = _category_index(categories)
    return {key: codes[value] for key, value in values}, (
        codes[default] if default is not None else -1
    )
