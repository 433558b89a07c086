"""Population stability index (PSI) per feature between a reference and a current table.

PSI = sum over bins of (current% - reference%) * ln(current% / reference%). Numeric features
are binned at the reference's quantiles (so each reference bin holds about the same share);
categorical features compare category shares. Missing values are a bin of their own. The usual
reading: below 0.1 stable, 0.1-0.25 a shift worth a look, above 0.25 a population change.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from secure_pipeline.features.engineering import Feature

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Floor for empty bins: an empty bin would otherwise make the index infinite.
_FLOOR = 1e-4


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature.

    Attributes:
        feature: Feature name.
        psi: Population stability index.
        bins: Number of bins compared.
    """

    feature: str
    psi: float
    bins: int


def _shares(counts: "np.ndarray") -> "np.ndarray":
    import numpy as np

    total = counts.sum()
    shares = counts / total if total else np.zeros_like(counts, dtype="float64")
    return np.maximum(shares, _FLOOR)


def _psi(reference: "np.ndarray", current: "np.ndarray") -> float:
    import numpy as np

    ref, cur = _shares(reference), _shares(current)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _edges(present: "np.ndarray", bins: int) -> "np.ndarray":
    """Bin edges from the reference's quantiles, its most common value and its range.

    The extra edges keep the most common value in a bin of its own and put anything beyond the
    reference's range in bins of their own. Without them a constant or mostly-zero column
    (capital gains) collapses into one bin, and a shift of its values upwards goes unseen.
    """
    import numpy as np

    if not present.size:
        return np.array([])
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1))[1:-1]
    values, counts = np.unique(present, return_counts=True)
    mode = values[np.argmax(counts)]
    extra = [present.min(), mode, np.nextafter(mode, np.inf), np.nextafter(present.max(), np.inf)]
    return np.unique(np.concatenate([quantiles, extra]))


def _binned(values: "np.ndarray", edges: "np.ndarray") -> "np.ndarray":
    """Counts per bin: bin 0 holds missing values, bins 1..len(edges)+1 the quantile bins."""
    import numpy as np

    index = np.where(np.isnan(values), 0, np.searchsorted(edges, values, "right") + 1)
    return np.bincount(index.astype("int64"), minlength=len(edges) + 2)


def population_stability(
    reference: "pd.DataFrame", current: "pd.DataFrame", features: Sequence[Feature], bins: int
) -> list[FeatureDrift]:
    """PSI of each feature, most drifted first.

    Args:
        reference: The reference feature table.
        current: The feature table being checked.
        features: The features to compare (both tables must have them).
        bins: Quantile bins for numeric features.
    """
    import numpy as np

    results = []
    for feature in features:
        ref = reference[feature.name].to_numpy(dtype="float64", na_value=np.nan)
        cur = current[feature.name].to_numpy(dtype="float64", na_value=np.nan)
        if feature.kind == "categorical":
            # codes -1..n-1; shift by one so missing (-1) is bin 0
            size = len(feature.categories) + 1
            ref_counts = np.bincount(ref.astype("int64") + 1, minlength=size)
            cur_counts = np.bincount(cur.astype("int64") + 1, minlength=size)
        else:
            edges = _edges(ref[~np.isnan(ref)], bins)

            ref_counts, cur_counts = _binned(ref, edges), _binned(cur, edges)
        results.append(FeatureDrift(feature.name, _psi(ref_counts, cur_counts), len(ref_counts)))
    return sorted(results, key=lambda d: d.psi, reverse=True)
