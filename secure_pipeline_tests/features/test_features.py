"""Feature derivation and the population stability index."""

import numpy as np
import pandas as pd
import pytest

from secure_pipeline.features.drift import chunked_stability, population_stability
from secure_pipeline.features.engineering import build_features, feature_catalog
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline.validation.parsing import parse_fileset


@pytest.fixture(scope="module")
def adult_features() -> pd.DataFrame:
    pipeline = adult_pipeline()
    files = {"train": (DATA_DIR / "adult.data").read_bytes(),
             "test": (DATA_DIR / "adult.test").read_bytes()}  # fmt: skip
    return build_features(parse_fileset(files, pipeline.schema).frame, pipeline)


def test_catalog_follows_the_spec() -> None:
    catalog = {f.name: f for f in feature_catalog(adult_pipeline())}
    assert "fnlwgt" not in catalog  # excluded: a survey weight, not a person's attribute
    assert "income" not in catalog  # the label is not a feature
    assert catalog["age_band"].categories == ("<25", "25-35", "35-45", "45-55", "55-65", ">=65")
    assert catalog["age_band"].sensitive
    assert catalog["sex"].sensitive
    assert catalog["race"].sensitive
    assert not catalog["education"].sensitive
    assert catalog["log1p_capital_gain"].kind == "numeric"


def test_encodings_are_the_schema_order_and_stable(adult_features) -> None:
    pipeline = adult_pipeline()
    sex = next(c for c in pipeline.schema.columns if c.name == "sex")
    assert sex.allowed == ("Female", "Male")
    frame = adult_features
    assert set(frame["sex"].unique()) == {0, 1}
    assert (frame["workclass"] == -1).sum() == 2799  # missing stays visible as -1
    assert frame["label"].mean() == pytest.approx(11687 / 48842)
    bands = frame["age_band"].to_numpy()
    ages = frame["age"].to_numpy()
    assert ((ages < 25) == (bands == 0)).all()
    assert ((ages >= 65) == (bands == 5)).all()
    # the same rows in another order encode to the same codes
    again = build_features(
        parse_fileset({"train": (DATA_DIR / "adult.data").read_bytes()}, pipeline.schema).frame,
        pipeline,
    )
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    pd.testing.assert_frame_equal(again.drop(columns="split"), train.drop(columns="split"))


def test_psi_is_zero_for_identical_and_large_for_shifted(adult_features) -> None:
    catalog = feature_catalog(adult_pipeline())
    same = population_stability(adult_features, adult_features, catalog, 10)
    assert max(d.psi for d in same) == pytest.approx(0.0, abs=1e-9)
    older = adult_features.assign(age=adult_features["age"] + 15)
    drift = population_stability(adult_features, older, catalog, 10)
    assert drift[0].feature == "age"
    assert drift[0].psi > 0.25
    split = population_stability(
        adult_features[adult_features["split"] == "train"],
        adult_features[adult_features["split"] == "test"],
        catalog,
        10,
    )
    assert max(d.psi for d in split) < 0.1  # the published split is one population


def test_psi_counts_missing_values_as_their_own_bin(adult_features) -> None:
    catalog = [f for f in feature_catalog(adult_pipeline()) if f.name == "hours_per_week"]
    holes = adult_features.assign(
        hours_per_week=adult_features["hours_per_week"].where(
            np.arange(len(adult_features)) % 2 == 0
        )
    )
    assert population_stability(adult_features, holes, catalog, 10)[0].psi > 0.25


def test_psi_sees_shifts_in_constant_and_mostly_zero_columns(adult_features) -> None:
    catalog = [f for f in feature_catalog(adult_pipeline()) if f.name == "log1p_capital_gain"]
    gains = adult_features["log1p_capital_gain"]
    assert (gains == 0).mean() > 0.9  # quantile bins alone put nearly everything in one bin
    # a tenth of the people who had no gains now report small ones
    moved = adult_features.assign(
        log1p_capital_gain=gains.where((gains != 0) | (np.arange(len(gains)) % 5 != 0), 0.5)
    )
    assert population_stability(adult_features, moved, catalog, 10)[0].psi > 0.1
    # a column that was constant, then is not
    constant = adult_features.assign(log1p_capital_gain=0.0)
    grown = constant.assign(log1p_capital_gain=np.where(np.arange(len(gains)) % 2 == 0, 0.0, 9.0))
    assert population_stability(constant, grown, catalog, 10)[0].psi > 0.25
    # values beyond the reference's range are their own bin
    beyond = adult_features.assign(log1p_capital_gain=gains.where(gains != gains.max(), 20.0))
    assert population_stability(adult_features, beyond, catalog, 10)[0].psi > 0.0


def _chunks(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[start : start + size] for start in range(0, len(frame), size)]


@pytest.mark.parametrize("size", [1_000, 4_096, 16_281, 100_000])
def test_psi_a_chunk_at_a_time_is_the_whole_tables(adult_features, size) -> None:
    catalog = feature_catalog(adult_pipeline())
    reference = adult_features[adult_features["split"] == "train"]
    current = adult_features.assign(age=adult_features["age"] + 3)
    whole = population_stability(reference, current, catalog, 10)
    chunked = chunked_stability(
        lambda: iter(_chunks(reference, size)), _chunks(current, size), catalog, 10
    )
    assert [(d.feature, d.bins) for d in chunked] == [(d.feature, d.bins) for d in whole]
    assert [d.psi for d in chunked] == pytest.approx([d.psi for d in whole], abs=1e-12)


def test_psi_over_a_sampled_reference(adult_features) -> None:
    # 48,842 reference rows, at most 1,000 kept for the bin edges: every 64th row.
    catalog = feature_catalog(adult_pipeline())
    opened = []

    def reference():
        opened.append(True)
        return iter(_chunks(adult_features, 3_000))

    same = chunked_stability(reference, _chunks(adult_features, 5_000), catalog, 10,
                             sample_rows=1_000)  # fmt: skip
    assert len(opened) == 2  # once for the sample, once to count every row
    assert max(d.psi for d in same) == pytest.approx(0.0, abs=1e-9)
    older = adult_features.assign(age=adult_features["age"] + 15)
    drift = chunked_stability(reference, _chunks(older, 5_000), catalog, 10, sample_rows=1_000)
    assert drift[0].feature == "age"
    assert drift[0].psi > 0.25
    exact = {d.feature: d.psi for d in population_stability(adult_features, older, catalog, 10)}
    assert drift[0].psi == pytest.approx(exact["age"], rel=0.2)


def test_psi_sample_size_must_be_positive(adult_features) -> None:
    catalog = feature_catalog(adult_pipeline())
    with pytest.raises(ValueError, match="sample_rows must be positive"):
        chunked_stability(lambda: iter([adult_features]), [adult_features], catalog, 10,
                          sample_rows=0)  # fmt: skip


def test_psi_refuses_codes_beyond_the_catalog(adult_features) -> None:
    catalog = feature_catalog(adult_pipeline())
    beyond = adult_features.assign(sex=adult_features["sex"].where(adult_features.index > 0, 7))
    with pytest.raises(ValueError, match="'sex' has code 7, expected codes -1 to 1"):
        population_stability(adult_features, beyond, catalog, 10)
