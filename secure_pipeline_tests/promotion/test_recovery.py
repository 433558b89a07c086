"""Automatic recovery acts only on the monitor identity's signed failed verdict about the champion.

The insider can write the store: they can drop a verdict envelope of their own making under the
live window, or copy a real one about another model. None of that rolls the champion back; a
verdict the monitor identity signed, that failed with ERROR severity about the current champion,
does: through the verified rollback, with a new signed champion decision and audit records.
"""

import base64
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from secure_pipeline.errors import PolicyViolation
from secure_pipeline.names import LIVE_INPUT_DRIFT, LIVE_SCORE_DRIFT
from secure_pipeline.promotion.gate import promote
from secure_pipeline.promotion.recovery import failed_live_checks, recover
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.registry.decisions import champion, decisions
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import INGEST, MONITOR
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline.verdicts import verdict_statement
from secure_pipeline_tests.conftest import Registered

WINDOW = hashlib.sha256(b"a live window").hexdigest()


@pytest.fixture
def store(reference_run: Registered, tmp_path: Path, monkeypatch) -> LocalSnapshotStore:
    """A private copy of the reference run's store (same registry), whose champion decision
    names a previous champion (the same version, crowned again), so there is one to go back to.
    """
    home = tmp_path / "private-home"
    shutil.copytree(reference_run.home / "store", home / "store")
    (home / "mlflow").mkdir()
    monkeypatch.setenv("SECURE_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(reference_run.home))
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", f"sqlite:///{reference_run.home / 'mlflow' / 'mlflow.db'}"
    )
    copied = LocalSnapshotStore(home / "store")
    promote(adult_pipeline(), reference_run.name, reference_run.version, store=copied,
            audit=AuditLog(copied), actor="test")  # fmt: skip
    return copied


def _champion(store: LocalSnapshotStore):
    current = champion(decisions(store, trust_policy(), "adult")[0])
    assert current is not None
    return current


def _verdict(
    store: LocalSnapshotStore,
    *,
    identity: str = MONITOR,
    check: str = LIVE_INPUT_DRIFT,
    passed: bool = False,
    severity: str = "ERROR",
    model_sha256: str | None = None,
    window: str = WINDOW,
) -> str:
    """Store a live verdict envelope about ``window``, signed by ``identity``'s key."""
    current = _champion(store)
    document = verdict_statement(
        adult_pipeline(), asset="adult/live_traffic", check=check, subject=window,
        passed=passed, severity=severity,
        summary={"max_psi": 0.9, "champion_version": current.version,
                 "model_sha256": model_sha256 or current.model_sha256},
        run_id="test", trust_digest=signer_for(identity).policy_digest,
    )  # fmt: skip
    envelope = attestations.sign(document, signer_for(identity))
    return attestations.store_envelope(store, "verdicts", window, envelope)


def _recover(store: LocalSnapshotStore):
    return recover(adult_pipeline(), store=store, audit=AuditLog(store), trust=trust_policy(),
                   window_sha256=WINDOW, actor="test")  # fmt: skip


def _events(store: LocalSnapshotStore) -> list[dict]:
    out = io.StringIO()
    AuditLog(store).export(out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_signed_failed_live_check_of_the_champion_rolls_it_back(store) -> None:
    before = _champion(store)
    key = _verdict(store)
    _verdict(store, check=LIVE_SCORE_DRIFT, passed=True, severity="ERROR")  # passed: not a cause
    outcome = _recover(store)
    after = _champion(store)
    assert after.sha256 != before.sha256
    assert after.facts["reason"] == "rollback"
    assert after.facts["previous_champion"]["attestation"] == before.sha256
    assert outcome.restored == after.version
    assert [f.check for f in outcome.failed] == [LIVE_INPUT_DRIFT]
    assert outcome.failed[0].key == key
    events = [r["event"] for r in _events(store)]
    assert events[-2:] == ["promotion.rollback", "serving.rolled_back"]
    last = _events(store)[-1]
    assert last["details"]["checks"] == [LIVE_INPUT_DRIFT]
    assert last["details"]["window"] == WINDOW


def test_a_verdict_forged_with_another_stages_key_rolls_nothing_back(store) -> None:
    before = _champion(store)
    _verdict(store, identity=INGEST)  # the insider holds no monitor key
    failed, refused = failed_live_checks(store, trust_policy(), adult_pipeline(), WINDOW)
    assert failed == []
    assert len(refused) == 1
    assert "only monitor may make it" in refused[0]
    with pytest.raises(PolicyViolation, match="no failed blocking live verdict signed by the"):
        _recover(store)
    assert _champion(store).sha256 == before.sha256
    assert _events(store)[-1]["event"] == "promotion.refused"


def test_an_edited_verdict_rolls_nothing_back(store) -> None:
    """A passing verdict rewritten as a failure: the signature no longer verifies."""
    before = _champion(store)
    key = _verdict(store, passed=True)
    path = store.root / key
    raw = json.loads(path.read_bytes())
    payload = json.loads(base64.b64decode(raw["payload"]))
    payload["predicate"]["passed"] = False
    raw["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    forged = json.dumps(raw).encode()
    attestations.store_envelope(store, "verdicts", WINDOW, forged)
    with pytest.raises(PolicyViolation, match="no failed blocking live verdict"):
        _recover(store)
    assert _champion(store).sha256 == before.sha256


@pytest.mark.parametrize(
    ("what", "changes"),
    [
        ("a warning", {"severity": "WARN"}),
        ("a pass", {"passed": True}),
        ("another model", {"model_sha256": "0" * 64}),
        ("another window", {"window": hashlib.sha256(b"elsewhere").hexdigest()}),
    ],
)
def test_a_signed_verdict_that_gives_no_reason_rolls_nothing_back(store, what, changes) -> None:
    before = _champion(store)
    _verdict(store, **changes)
    with pytest.raises(PolicyViolation, match="gives no reason to roll back"):
        _recover(store)
    assert _champion(store).sha256 == before.sha256, what
