"""The features a spec produces: derived from the schema and the feature settings alone."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from secure_pipeline.spec.pipeline import PipelineSpec

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


def feature_catalog(pipeline: "PipelineSpec") -> list[Feature]:
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
