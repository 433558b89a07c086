"""The feature table, derived from validated rows as the `FeatureSpec` declares.

Encodings are fixed by the schema, not learned from the batch: a category's code is its index
in the schema's allowed values (-1 when missing), so the same value has the same code in every
snapshot and drift between snapshots is measured on comparable columns.
"""

from typing import TYPE_CHECKING

from secure_pipeline.spec import (
    LABEL_COLUMN,
    RESERVED_SPLIT_COLUMN,
    Feature,
    PipelineSpec,
    feature_catalog,
)

if TYPE_CHECKING:
    import pandas as pd


def build_features(frame: "pd.DataFrame", pipeline: PipelineSpec) -> "pd.DataFrame":
    """Derive the feature table from validated rows.

    Args:
        frame: Validated rows (schema columns plus ``split``).
        pipeline: The spec.

    Returns:
        One column per `Feature`, then ``label`` (0/1, when the data is labelled) and
        ``split``.
    """
    import pandas as pd

    columns: dict[str, object] = {}
    for feature in feature_catalog(pipeline):
        columns[feature.name] = feature_column(feature, frame[feature.source], pipeline)
    schema = pipeline.schema
    if schema.label is not None and schema.positive_label is not None:
        columns[LABEL_COLUMN] = (frame[schema.label] == schema.positive_label).astype("int8")
    columns[RESERVED_SPLIT_COLUMN] = frame[RESERVED_SPLIT_COLUMN].astype("string")
    return pd.DataFrame(columns)


def feature_column(feature: Feature, values: "pd.Series", pipeline: PipelineSpec) -> object:
    """One feature's values from its validated source column (training and serving alike)."""
    import numpy as np
    import pandas as pd

    if feature.name == feature.source and feature.kind == "numeric":
        return values.astype("float64")
    if feature.name == feature.source:
        codes = pd.Categorical(values, categories=list(feature.categories)).codes
        return codes.astype("int16")
    if feature.kind == "categorical":  # a band
        numbers = values.astype("float64").to_numpy()
        cuts = np.asarray(pipeline.features.bands[feature.source], dtype="float64")
        band = np.searchsorted(cuts, numbers, side="right").astype("int16")
        return np.where(np.isnan(numbers), -1, band).astype("int16")
    return np.log1p(values.astype("float64").clip(lower=0))  # log1p of a non-negative amount
