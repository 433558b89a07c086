"""The feature table, derived from validated rows as the `FeatureSpec` declares.

Encodings are fixed by the schema, not learned from the batch: a category's code is its index
in the schema's allowed values (-1 when missing), so the same value has the same code in every
snapshot and drift between snapshots is measured on comparable columns.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from secure_pipeline.pipeline import RESERVED_SPLIT_COLUMN, SecurePipeline

if TYPE_CHECKING:
    import pandas as pd

LABEL_COLUMN = "label"
FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    """One column of the feature table.

    Attributes:
        name: Column name.
        kind: ``numeric`` (float) or ``categorical`` (integer codes, -1 missing).
        source: The validated column it is derived from.
        categories: For categorical features: what each code means, in code order.
        sensitive: Whether it describes a protected group (for fairness audits).
    """

    name: str
    kind: FeatureKind
    source: str
    categories: tuple[str, ...] = ()
    sensitive: bool = False


def feature_catalog(pipeline: SecurePipeline) -> list[Feature]:
    """Every feature the pipeline's spec produces, in column order."""
    spec, schema = pipeline.features, pipeline.schema
    sensitive = set(pipeline.sensitive_features)
    catalog: list[Feature] = []
    for column in schema.columns:
        if column.name == schema.label or column.name in spec.exclude:
            continue
        is_sensitive = column.name in sensitive
        if column.dtype in ("int", "float", "bool"):
            catalog.append(Feature(column.name, "numeric", column.name, sensitive=is_sensitive))
        elif column.dtype == "category":
            categories = tuple(column.allowed or ())
            catalog.append(
                Feature(column.name, "categorical", column.name, categories, is_sensitive)
            )
        # free-text columns are not features
    for name, cuts in spec.bands.items():
        labels = _band_labels(cuts)
        catalog.append(
            Feature(f"{name}_band", "categorical", name, labels, sensitive=name in sensitive)
        )
    for name in spec.log1p:
        catalog.append(Feature(f"log1p_{name}", "numeric", name, sensitive=name in sensitive))
    return catalog


def _band_labels(cuts: tuple[float, ...]) -> tuple[str, ...]:
    edges = [f"{c:g}" for c in cuts]
    return (f"<{edges[0]}", *(f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)),
            f">={edges[-1]}")  # fmt: skip


def build_features(frame: "pd.DataFrame", pipeline: SecurePipeline) -> "pd.DataFrame":
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


def feature_column(feature: Feature, values: "pd.Series", pipeline: SecurePipeline) -> object:
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
