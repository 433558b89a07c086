"""Retention on a real run: what is past its date is shredded, the champion's lineage is spared.

The module's tests build on each other, in order: a champion is trained on a first ingestion,
a second ingestion follows; nothing is shredded before the date; after it the second ingestion
is shredded and the champion's is spared, once; with the override the champion's data goes too
and the champion is flagged and refused.
"""

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from secure_pipeline.errors import ErasedError
from secure_pipeline.names import CHAMPION
from secure_pipeline.privacy.erasure import enforce, ingestion_snapshots
from secure_pipeline.privacy.flags import erased_data_flags
from secure_pipeline.privacy.retention import champion_lineage, is_expired
from secure_pipeline.registry.evidence import verify_reference
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.trust.identities import PRIVACY
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import pointed_at
from secure_pipeline_tests.privacy.erasure_helpers import Run, new_run

DAYS = 30


def test_an_ingestion_expires_after_its_retention_days() -> None:
    assert not is_expired("2026-01-01T23:59:00Z", DAYS, date(2026, 1, 31))
    assert is_expired("2026-01-01T23:59:00Z", DAYS, date(2026, 2, 1))
    assert not is_expired("2026-01-01T00:00:00Z", DAYS, datetime(2026, 1, 31, 23, tzinfo=UTC))


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory, dev_keys: Path) -> Run:
    """A champion trained on a first ingestion, and a second ingestion after it."""
    run = new_run(tmp_path_factory, "retention", retention_days=DAYS)
    with pointed_at(run.home, dev_keys):
        run.run_all()
        run.source(drop=[f"C{i:05d}" for i in range(0, 1000, 20)])
        assert run.ingest().success
    return run


@pytest.fixture
def at(expiring: Run, monkeypatch: pytest.MonkeyPatch) -> Run:
    return expiring.point(monkeypatch)


def _ingestions(run: Run) -> tuple[list[str], list[str]]:
    """Store keys of the snapshots of (the champion's ingestion, the later one)."""
    store, trust = run.store(), trust_policy()
    champion = champion_lineage(run.pipeline, store, trust)
    assert champion is not None
    snapshots = ingestion_snapshots(store, run.pipeline, trust)
    (other,) = [d for d in snapshots if d != champion.raw_sha256]
    return snapshots[champion.raw_sha256], snapshots[other]


def _digest(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", maxsplit=1)[0]


def _enforce(run: Run, days_from_now: int, pipeline=None):
    today = datetime.now(UTC) + timedelta(days=days_from_now)
    return enforce(
        run.store(), pipeline or run.pipeline, trust_policy(), today=today,
        signer=signer_for(PRIVACY),
    )  # fmt: skip


def _champion_ok(run: Run, pipeline=None) -> tuple[bool, dict[str, tuple[bool, str]]]:
    with verify_reference(
        f"models:/credit@{CHAMPION}", pipeline=pipeline or run.pipeline, trust=trust_policy(),
        store=run.store(),
    ) as evidence:  # fmt: skip
        return evidence.ok, {s: (ok, d) for s, ok, d in evidence.verification.steps}


def test_nothing_is_shredded_before_its_date(at: Run) -> None:
    count = AuditLog(at.store()).verify(trust=trust_policy()).count
    for days in (0, DAYS):
        report = _enforce(at, days)
        assert report.shredded == []
        assert report.spared == []
        assert report.problems == []
    assert AuditLog(at.store()).verify(trust=trust_policy()).count == count


def test_what_is_past_its_date_is_shredded_and_the_champions_lineage_spared(at: Run) -> None:
    store, trust = at.store(), trust_policy()
    champion_keys, other_keys = _ingestions(at)
    report = _enforce(at, DAYS + 1)
    assert report.problems == []
    assert {s["key"] for s in report.shredded} == set(other_keys)
    assert {s["reason"] for s in report.shredded} == {"retention"}
    assert set(report.spared) == set(champion_keys)
    for key in other_keys:
        with pytest.raises(ErasedError, match="retention"):
            store.read_bytes((key, _digest(key)))
    for key in champion_keys:
        store.read_bytes((key, _digest(key)))
    (shred,) = [
        r.details for r in AuditLog(store).verified_records(trust) if r.event == "privacy.shredded"
    ]
    assert shred["reason"] == "retention"
    assert shred["subjects"] == []
    assert set(shred["snapshots"]) == set(other_keys)
    ok, steps = _champion_ok(at)
    assert ok, steps
    # Once done, done: a second run shreds nothing and writes nothing.
    count = AuditLog(store).verify(trust=trust).count
    again = _enforce(at, DAYS + 1)
    assert again.shredded == []
    assert again.flagged == []
    assert AuditLog(store).verify(trust=trust).count == count


def test_the_override_expires_the_champions_data_and_flags_it(at: Run) -> None:
    store, trust = at.store(), trust_policy()
    champion_keys, _ = _ingestions(at)
    champion = champion_lineage(at.pipeline, store, trust)
    assert champion is not None
    override = dataclasses.replace(
        at.pipeline,
        privacy=dataclasses.replace(at.pipeline.privacy, retention_overrides_champion=True),
    )
    report = _enforce(at, DAYS + 1, override)
    assert {s["key"] for s in report.shredded} == set(champion_keys)
    (flagged,) = report.flagged
    assert flagged.model_sha256 == champion.model_sha256
    assert flagged.reason == "retention"
    (flag,) = erased_data_flags(store, trust, "credit", champion.model_sha256)
    assert flag.identity == PRIVACY
    assert set(flag.predicate["snapshots"]) == set(champion_keys)
    ok, steps = _champion_ok(at, override)
    assert not ok
    passed, detail = steps["erased data"]
    assert not passed
    assert "(retention period expired)" in detail
    count = AuditLog(store).verify(trust=trust).count
    again = _enforce(at, DAYS + 1, override)
    assert again.shredded == []
    assert again.flagged == []
    assert AuditLog(store).verify(trust=trust).count == count
