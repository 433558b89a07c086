"""The features a spec produces: derived from the schema and the feature settings alone."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from secure_pipeline.spec.stages import DerivedColumn

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
        derivation: The declared derived column it is, if any.
    """

    name: str
    kind: FeatureKind
    source: str
    categories: tuple[str, ...] = ()
    sensitive: bool = False
    derivation: DerivedColumn | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        """Every validated column it is computed from."""
        return self.derivation.sources if self.derivation is not None else (self.source,)


def feature_catalog(pipeline: "PipelineSpec") -> list[Feature]:
    """Every feature the pipeline's spec produces, in column order, then derived ones.

    Identifiers, personal and ignored columns are never features; free text and dates are
    not either (a date becomes one through a ``date_difference``).
    """
    spec, schema = pipeline.features, pipeline.schema
    sensitive = set(pipeline.sensitive_features)
    catalog: list[Feature] = []
    for column in schema.columns:
        if column.name == schema.label or column.name in spec.exclude:
            continue
        if column.role in ("identifier", "personal", "ignore"):
            continue
        is_sensitive = column.name in sensitive
        if column.dtype in ("int", "float", "bool"):
            catalog.append(Feature(column.name, "numeric", column.name, sensitive=is_sensitive))
        elif column.dtype == "category":
            categories = tuple(column.allowed or ())
            catalog.append(
                Feature(column.name, "categorical", column.name, categories, is_sensitive)
            )
        # free-text and date columns are not features by themselves
    for name, cuts in spec.bands.items():
        labels = _band_labels(cuts)
        catalog.append(
            Feature(f"{name}_band", "categorical", name, labels, sensitive=name in sensitive)
        )
    for name in spec.log1p:
        catalog.append(Feature(f"log1p_{name}", "numeric", name, sensitive=name in sensitive))
    for derived in spec.derived:
        is_sensitive = derived.sensitive or derived.name in sensitive
        if derived.kind == "map":
            categories = derived.output_categories
        elif derived.kind == "band":
            categories = _band_labels(derived.cuts) if derived.cuts else ()
        else:
            catalog.append(Feature(derived.name, "numeric", derived.source,
                                   sensitive=is_sensitive, derivation=derived))  # fmt: skip
            continue
        catalog.append(Feature(derived.name, "categorical", derived.source, categories,
                               is_sensitive, derived))  # fmt: skip
    return catalog


def _band_labels(cuts: tuple[float, ...]) -> tuple[str, ...]:
    edges = [f"{c:g}" for c in cuts]
    return (f"<{edges[0]}", *(f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)),
            f">={edges[-1]}")  # fmt: skip
