"""The privacy settings of a spec are checked when it is built."""

import dataclasses

import pytest

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.spec import PrivacySpec
from secure_pipeline_tests.privacy.erasure_helpers import small_pipeline


def test_retention_needs_snapshots_that_can_expire() -> None:
    adult = adult_pipeline()  # no identifier or personal column: nothing is encrypted
    assert not adult.holds_personal_data
    with pytest.raises(ConfigurationError, match="only snapshots of personal data are encrypted"):
        dataclasses.replace(adult, source=dataclasses.replace(adult.source, retention_days=30))
    credit = small_pipeline(retention_days=30)
    assert credit.holds_personal_data
    assert credit.source.retention_days == 30
    with pytest.raises(ConfigurationError, match="retention_days must be at least 1"):
        small_pipeline(retention_days=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"erased_data_models": "ignore"}, "must be 'refuse' or 'warn'"),
        ({"key_deletion_window_days": 3}, "between 7 and 30"),
        ({"key_deletion_window_days": 31}, "between 7 and 30"),
        ({"enforce_cron": "daily"}, "must have five fields"),
    ],
)
def test_privacy_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        small_pipeline(privacy=PrivacySpec(**settings))


def test_the_privacy_stage_has_its_own_namespace() -> None:
    credit = small_pipeline()
    clash = dataclasses.replace(
        credit.orchestration,
        privacy=dataclasses.replace(credit.orchestration.privacy, namespace="sp-ingest"),
    )
    with pytest.raises(ConfigurationError, match="each stage needs its own Kubernetes namespace"):
        dataclasses.replace(credit, orchestration=clash)
