"""Erasure by crypto-shredding, on a real run: a trained, signed, registered and promoted model.

The tests of this module build on each other, in order, as an erasure does in production: junk
in the flag folder changes nothing; a subject is erased (listed, its model flagged, receipted;
its ingestion is the latest, so shredding waits); the flagged model is refused (or warned of);
the next ingestion excludes the subject and `enforce` shreds the old ingestion and what derives
from it, and only that; a damaged index counts as holding everyone; the command line does the
same.
"""

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from secure_pipeline.cli import main
from secure_pipeline.errors import ConfigurationError, ErasedError
from secure_pipeline.names import CHAMPION
from secure_pipeline.pipeline import SourceFile
from secure_pipeline.privacy.erasure import (
    enforce,
    erase,
    hash_identifiers,
    ingestion_snapshots,
    locate,
)
from secure_pipeline.privacy.flags import FLAG_TYPE, erased_data_flags, flags_prefix
from secure_pipeline.privacy.subjects import erased_subjects, shard_key
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.evidence import verify_reference
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import GATE, INGEST, PRIVACY
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import overwrite_raw, pointed_at
from secure_pipeline_tests.privacy.erasure_helpers import PRIVACY as PRIVACY_SPEC
from secure_pipeline_tests.privacy.erasure_helpers import Run, new_run

ERASED = "C00950"  # an applicant of the first ingestion
CLI_PIPELINE = "secure_pipeline_tests.privacy.erasure_helpers:cli_pipeline"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, dev_keys: Path) -> Run:
    """One ingestion, and the champion model trained on it."""
    run = new_run(tmp_path_factory, "erasure")
    with pointed_at(run.home, dev_keys):
        run.run_all()
    return run


@pytest.fixture
def at(trained: Run, monkeypatch: pytest.MonkeyPatch) -> Run:
    return trained.point(monkeypatch)


def _evidence(run: Run, pipeline=None) -> tuple[bool, dict[str, tuple[bool, str]], str]:
    """Verify the champion as serving does: ``(ok, {step: (passed, detail)}, model digest)``."""
    with verify_reference(
        f"models:/credit@{CHAMPION}", pipeline=pipeline or run.pipeline, trust=trust_policy(),
        store=run.store(),
    ) as evidence:  # fmt: skip
        steps = {step: (ok, detail) for step, ok, detail in evidence.verification.steps}
        return evidence.ok, steps, str(evidence.verification.model_sha256)


def _digest(key: str) -> str:
    """The digest a snapshot key names."""
    return key.rsplit("/", 1)[-1].split(".", maxsplit=1)[0]


def _audit_events(run: Run) -> list[tuple[str, dict]]:
    return [(r.event, dict(r.details)) for r in AuditLog(run.store()).verified_records()]


def test_junk_and_flags_by_other_identities_neither_block_nor_flag_a_model(at: Run) -> None:
    ok, steps, model = _evidence(at)
    assert ok, steps
    assert steps["erased data"][0]
    store = at.store()
    prefix = flags_prefix("credit", model)
    store.create_object(f"{prefix}{'0' * 64}.json", b"not an envelope")
    # A well-formed flag, but signed by the gate: only the privacy identity's flags count.
    forged = attestations.statement(
        {"model.skops": model}, FLAG_TYPE,
        {"pipeline": "credit", "model_sha256": model, "versions": ["1"], "reason": "erasure",
         "subjects": [], "snapshots": [], "created_at": "2026-01-01T00:00:00Z"},
    )  # fmt: skip
    data = attestations.sign(forged, signer_for(GATE))
    store.create_object(f"{prefix}{attestations.sha256_of(data)}.json", data)
    assert erased_data_flags(store, trust_policy(), "credit", model) == []
    ok, steps, _ = _evidence(at)
    assert ok, steps
    passed, detail = steps["erased data"]
    assert passed
    assert "2 stored flag(s) did not verify and were ignored" in detail
    assert "only privacy may make it" in detail


@pytest.fixture(scope="module")
def erased(trained: Run, dev_keys: Path):
    """The erasure of one subject of the only (so the latest) ingestion."""
    with pointed_at(trained.home, dev_keys):
        store, trust = trained.store(), trust_policy()
        before = AuditLog(store).verify(trust=trust).count
        receipt = erase(
            store, trained.pipeline, trust, [f"  {ERASED} "], now=False,
            signer=signer_for(PRIVACY),
        )  # fmt: skip
        return receipt, before


def test_an_erasure_is_listed_flagged_and_receipted_without_the_identifier(at, erased) -> None:
    receipt, before = erased
    store, trust = at.store(), trust_policy()
    (subject,) = hash_identifiers(at.pipeline, [ERASED])
    assert receipt.subjects == receipt.new_subjects == [subject]
    assert erased_subjects(store, "credit", trust) == {subject}
    (located,) = receipt.located
    (ingestion,) = located.ingestions
    assert ingestion.latest
    assert ingestion.evidence == "subject index"
    assert {d.asset for d in located.derived} >= {"credit/validated_credit", "credit/features"}
    (model,) = located.models
    assert model.versions == ("1",)
    (flagged,) = receipt.flagged
    assert flagged.model_sha256 == model.model_sha256
    assert flagged.versions == ["1"]
    # The only ingestion is the latest: its snapshots wait for the next one, and stay readable.
    assert receipt.shredded == []
    assert set(receipt.pending) == set(located.snapshot_keys())
    for key in ingestion.members.values():
        assert not store.shredded(key)
    # Receipts are in the signed chain, which verifies, with hashes and never the identifier.
    assert AuditLog(store).verify(trust=trust).count == before + len(receipt.audit_records)
    records = [AuditLog(store).record(seq, trust) for seq in receipt.audit_records]
    (record,) = records
    assert record.event == "privacy.erasure"
    assert record.identity == PRIVACY
    assert record.details["subjects"] == [subject]
    assert record.details["models"] == [{"sha256": model.model_sha256, "versions": ["1"]}]
    assert set(record.details["snapshots"]) == set(located.snapshot_keys())
    written = [
        *(at.home / "store" / "audit").rglob("*"),
        *(at.home / "store" / "privacy").rglob("*"),
    ]
    for path in written:
        if path.is_file():
            assert ERASED.encode() not in path.read_bytes(), path


def test_the_model_trained_on_erased_data_is_refused_or_warned_of(at, erased) -> None:
    receipt, _ = erased
    ok, steps, _ = _evidence(at)
    assert not ok
    passed, detail = steps["erased data"]
    assert not passed
    today = datetime.now(UTC).date().isoformat()
    assert f"trained on data erased on {today} (erasure of 1 data subject)" in detail
    assert "retrain" in detail
    warn = dataclasses.replace(
        at.pipeline, privacy=dataclasses.replace(PRIVACY_SPEC, erased_data_models="warn")
    )
    ok, steps, _ = _evidence(at, warn)
    assert ok, steps
    passed, detail = steps["erased data"]
    assert passed
    assert detail.startswith("warning: ")
    assert "retrain" in detail


@pytest.fixture(scope="module")
def completed(trained: Run, erased, dev_keys: Path):
    """The next ingestion (which excludes the subject), then the privacy job."""
    with pointed_at(trained.home, dev_keys):
        result = trained.ingest()
        assert result.success
        store, trust = trained.store(), trust_policy()
        today = datetime.now(UTC)
        first = enforce(store, trained.pipeline, trust, today=today, signer=signer_for(PRIVACY))
        count = AuditLog(store).verify(trust=trust).count
        second = enforce(store, trained.pipeline, trust, today=today, signer=signer_for(PRIVACY))
        return first, second, count


def test_enforce_shreds_the_superseded_ingestion_only_and_only_once(at, erased, completed) -> None:
    receipt, _ = erased
    first, second, count = completed
    store, trust = at.store(), trust_policy()
    (old,) = receipt.located[0].ingestions
    (subject,) = receipt.subjects
    # The new ingestion left the subject out at entry, so it does not hold it.
    now = locate(store, at.pipeline, trust, subject)
    assert [i.raw_sha256 for i in now.ingestions] == [old.raw_sha256]
    assert not now.ingestions[0].latest
    new = _latest(at)
    new_data = store.read_fileset((new.raw_key, new.raw_sha256))["main"]
    assert b"C00001" in new_data
    assert ERASED.encode() not in new_data
    # What held the subject is unreadable now; the new ingestion and its snapshots are not.
    erased_keys = receipt.located[0].snapshot_keys()
    assert {s["key"] for s in first.shredded} == set(erased_keys)
    assert {s["reason"] for s in first.shredded} == {"erasure"}
    assert first.pending == []
    assert first.problems == []
    for key in erased_keys:
        with pytest.raises(ErasedError, match="was erased"):
            store.read_bytes((key, _digest(key)))
    later = locate(store, at.pipeline, trust, hash_identifiers(at.pipeline, ["C00001"])[0])
    kept = later.snapshot_keys(new.raw_sha256)
    assert len(kept) >= 3
    assert not set(kept) & set(erased_keys)
    for key in kept:
        assert not store.shredded(key)
        store.read_bytes((key, _digest(key)))
    # Each shred is receipted in the chain, with the subject's hash and the key ids.
    shreds = [d for e, d in _audit_events(at) if e == "privacy.shredded"]
    (shred,) = shreds
    assert shred["reason"] == "erasure"
    assert shred["subjects"] == [subject]
    assert set(shred["snapshots"]) == set(erased_keys)
    assert len(shred["key_ids"]) == len(erased_keys)
    # Running again finds nothing to do and writes nothing.
    assert second.shredded == []
    assert second.flagged == []
    assert second.audit_records == []
    assert AuditLog(store).verify(trust=trust).count == count


def _latest(run: Run):
    """The latest ingestion (every ingestion of this module holds applicant C00001)."""
    (subject,) = hash_identifiers(run.pipeline, ["C00001"])
    held = locate(run.store(), run.pipeline, trust_policy(), subject).ingestions
    return next(i for i in held if i.latest)


def test_a_damaged_subject_index_counts_as_holding_every_subject(at, completed) -> None:
    store, trust = at.store(), trust_policy()
    (nobody,) = hash_identifiers(at.pipeline, ["C99999"])  # in no ingestion
    assert locate(store, at.pipeline, trust, nobody).ingestions == []
    latest = _latest(at)
    key = shard_key("credit", nobody[0], latest.raw_sha256)
    original = store.read_object(key)
    overwrite_raw(store, key, b"")  # an insider empties the shard that would name the subject
    try:
        (held,) = locate(store, at.pipeline, trust, nobody).ingestions
        assert held.raw_sha256 == latest.raw_sha256
        assert "not the one its signed ingestion record names" in held.evidence
    finally:
        overwrite_raw(store, key, original)
    assert locate(store, at.pipeline, trust, nobody).ingestions == []


def test_erasure_refuses_other_identities_and_pipelines_without_identifiers(at) -> None:
    store, trust = at.store(), trust_policy()
    with pytest.raises(PermissionError, match="privacy identity"):
        erase(store, at.pipeline, trust, ["C00002"], now=False, signer=signer_for(INGEST))
    with pytest.raises(ConfigurationError, match="no identifier column"):
        erase(store, adult_pipeline(), trust, ["x"], now=False, signer=signer_for(PRIVACY))
    with pytest.raises(ValueError, match="identifier must hold text"):
        erase(store, at.pipeline, trust, ["  "], now=False, signer=signer_for(PRIVACY))
    assert "C00002" not in {s for s in erased_subjects(store, "credit", trust)}


def test_the_command_line_locates_erases_and_enforces(at, completed, tmp_path) -> None:
    runner = CliRunner()
    store = at.store()
    (subject,) = hash_identifiers(at.pipeline, ["C00001"])
    located = runner.invoke(
        main, ["privacy", "locate", "--pipeline", CLI_PIPELINE, "--subject-id", "C00001",
               "--format", "json"],
    )  # fmt: skip
    assert located.exit_code == 0, located.output
    found = json.loads(located.output)
    assert found["subject_hash"] == subject
    assert len(found["ingestions"]) == 2
    assert "C00001" not in located.output
    ids = tmp_path / "ids.txt"
    ids.write_text("C00001\n\n")
    erased = runner.invoke(
        main, ["privacy", "erase", "--pipeline", CLI_PIPELINE, "--ids-file", str(ids)]
    )
    assert erased.exit_code == 0, erased.output
    assert "wait for the next ingestion" in erased.output
    assert "C00001" not in erased.output
    latest = next(i for i in found["ingestions"] if i["latest"])
    member = latest["members"]["main"]
    assert not store.shredded(member)
    now = runner.invoke(
        main, ["privacy", "erase", "--pipeline", CLI_PIPELINE, "--subject-id", "C00001", "--now"]
    )
    assert now.exit_code == 0, now.output
    assert store.shredded(member)
    with pytest.raises(ErasedError):
        store.read_bytes((member, _digest(member)))
    enforced = runner.invoke(main, ["privacy", "enforce", "--pipeline", CLI_PIPELINE])
    assert enforced.exit_code == 0, enforced.output
    assert "shredded none" in enforced.output
    both = runner.invoke(
        main, ["privacy", "erase", "--pipeline", CLI_PIPELINE, "--subject-id", "x",
               "--ids-file", str(ids)],
    )  # fmt: skip
    assert both.exit_code == 2
    assert "not both" in both.output
    assert AuditLog(store).verify(trust=trust_policy()).count > 0


@pytest.fixture
def two_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> Run:
    """A source of two files (no model): ``main`` and ``more``, applicants C1xxxx in the latter."""
    run = new_run(tmp_path_factory, "two-files")
    source = run.pipeline.source
    pipeline = dataclasses.replace(
        run.pipeline,
        source=dataclasses.replace(source, files=(*source.files, SourceFile("more", "more.txt"))),
    )
    lines = (run.landing / "credit.txt").read_text().splitlines()
    more = [lines[0]] + [line.replace("C0", "C1", 1) for line in lines[1:]]
    (run.landing / "more.txt").write_text("\n".join(more) + "\n")
    return dataclasses.replace(run, pipeline=pipeline).point(monkeypatch)


def test_a_file_an_unaffected_ingestion_shares_is_not_shredded(two_files: Run) -> None:
    run = two_files
    assert run.ingest().success
    store, trust = run.store(), trust_policy()
    receipt = erase(store, run.pipeline, trust, ["C10500"], now=False, signer=signer_for(PRIVACY))
    (old,) = receipt.located[0].ingestions
    assert receipt.shredded == []
    assert run.ingest().success  # `main` is unchanged: the same snapshot in both ingestions
    snapshots = ingestion_snapshots(store, run.pipeline, trust)
    new = next(d for d in snapshots if d != old.raw_sha256)
    shared = old.members["main"]
    assert shared in snapshots[new]
    assert old.members["more"] not in snapshots[new]
    report = enforce(
        store, run.pipeline, trust, today=datetime.now(UTC), signer=signer_for(PRIVACY)
    )
    shredded = {s["key"] for s in report.shredded}
    assert old.members["more"] in shredded
    assert shared not in shredded
    assert report.pending == []  # kept for good: it does not hold the subject
    assert set(snapshots[old.raw_sha256]) - {shared} == shredded
    store.read_bytes((shared, _digest(shared)))
    with pytest.raises(ErasedError):
        store.read_bytes((old.members["more"], _digest(old.members["more"])))
