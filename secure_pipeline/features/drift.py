"""Population stability index (PSI) per feature between a reference and a current table.

PSI = sum over bins of (current% - reference%) * ln(current% / reference%). Numeric features
are binned at the reference's quantiles (so each reference bin holds about the same share);
categorical features compare category shares. Missing values are a bin of their own. The usual
reading: below 0.1 stable, 0.1-0.25 a shift worth a look, above 0.25 a population change.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from secure_pipeline.features.engineering import Feature

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Reference rows above which a numeric feature's bin edges come from a systematic sample: 1M
# values of 8 bytes per feature, whatever the size of the reference.
REFERENCE_SAMPLE_ROWS = 1_000_000
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
    return chunked_stability(lambda: iter((reference,)), (current,), features, bins)


def chunked_stability(
    reference: "Callable[[], Iterable[pd.DataFrame]]",
    current: "Iterable[pd.DataFrame]",
    features: Sequence[Feature],
    bins: int,
    *,
    sample_rows: int = REFERENCE_SAMPLE_ROWS,
) -> list[FeatureDrift]:
    """PSI of each feature over tables read a chunk at a time, most drifted first.

    Memory holds one chunk, the per-bin counts and, per numeric feature, the reference values
    its bin edges are taken from: every value up to ``sample_rows`` reference rows (the edges,
    and so the index, are then exactly `population_stability`'s on the whole tables), a
    systematic sample of at most ``sample_rows`` (every 2^k-th row) above that. The counts are
    always of every row: with a sample, the reference is read a second time to count it.

    Args:
        reference: Opens the reference table as an iterable of chunks (called twice when the
            reference has more than ``sample_rows`` rows).
        current: The chunks of the table being checked.
        features: The features to compare (every chunk must have them).
        bins: Quantile bins for numeric features.
        sample_rows: The most reference values per numeric feature held for the bin edges.
    """
    import numpy as np

    if sample_rows < 1:
        raise ValueError(f"sample_rows must be positive, found {sample_rows}")
    numeric = [f for f in features if f.kind != "categorical"]
    ref_counts = _category_bins(features)
    samples: dict[str, list[np.ndarray]] = {f.name: [] for f in numeric}
    seen = kept = 0
    stride = 1
    for chunk in reference():
        _count_categories(ref_counts, chunk, features)
        # Keep the rows whose position in the whole table is a multiple of the stride.
        first = (-seen) % stride
        for feature in numeric:
            # A copy: a strided view would keep the whole chunk's column alive until halved.
            samples[feature.name].append(_values(chunk, feature)[first::stride].copy())
        kept += len(range(first, len(chunk), stride))
        seen += len(chunk)
        while kept > sample_rows:
            # The kept positions are 0, s, 2s, ...: every other one is 0, 2s, 4s, ...
            for name, parts in samples.items():
                samples[name] = [np.concatenate(parts)[::2]]
            kept, stride = (kept + 1) // 2, stride * 2
    edges = {}
    for feature in numeric:
        values = np.concatenate(samples.pop(feature.name) or [np.array([], dtype="float64")])
        edge = edges[feature.name] = _edges(values[~np.isnan(values)], bins)
        # With a stride of one the sample is the whole column; otherwise count on a second pass.
        ref_counts[feature.name] = (
            _binned(values, edge) if stride == 1 else np.zeros(len(edge) + 2, dtype="int64")
        )
    if stride > 1:
        for chunk in reference():
            _count_bins(ref_counts, chunk, numeric, edges)
    cur_counts = {name: np.zeros_like(counts) for name, counts in ref_counts.items()}
    for chunk in current:
        _count_categories(cur_counts, chunk, features)
        _count_bins(cur_counts, chunk, numeric, edges)
    results = [
        FeatureDrift(f.name, _psi(ref_counts[f.name], cur_counts[f.name]), len(ref_counts[f.name]))
        for f in features
    ]
    return sorted(results, key=lambda d: d.psi, reverse=True)


def _values(chunk: "pd.DataFrame", feature: Feature) -> "np.ndarray":
    import numpy as np

    return chunk[feature.name].to_numpy(dtype="float64", na_value=np.nan)


def _category_bins(features: Sequence[Feature]) -> dict[str, "np.ndarray"]:
    """Zero counts for each categorical feature: missing, then one bin per category."""
    import numpy as np

    return {
        f.name: np.zeros(len(f.categories) + 1, dtype="int64")
        for f in features
        if f.kind == "categorical"
    }


def _count_categories(
    counts: dict[str, "np.ndarray"], chunk: "pd.DataFrame", features: Sequence[Feature]
) -> None:
    import numpy as np

    for feature in features:
        if feature.kind == "categorical":
            # codes -1..n-1; shift by one so missing (-1) is bin 0
            total = counts[feature.name]
            found = np.bincount(_values(chunk, feature).astype("int64") + 1, minlength=len(total))
            if len(found) > len(total):
                raise ValueError(
                    f"feature {feature.name!r} has code {len(found) - 2}, expected codes -1 to "
                    f"{len(total) - 2} (its {len(total) - 1} categories): the table was not "
                    "encoded with this catalog"
                )
            total += found


def _count_bins(
    counts: dict[str, "np.ndarray"],
    chunk: "pd.DataFrame",
    numeric: Sequence[Feature],
    edges: dict[str, "np.ndarray"],
) -> None:
    for feature in numeric:
        counts[feature.name] += _binned(_values(chunk, feature), edges[feature.name])
