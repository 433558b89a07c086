"""Automatic recovery end to end: bad live traffic on a new champion rolls it back by itself.

Real nginx gateway, real slot processes over mutual TLS, the real canary release, the real
monitor and rollback jobs and sensor (`recovery_scenario`). The previous champion is verified
again and crowned by a new signed decision, the traffic is back on its slot, and the audit
trail records why.
"""

from pathlib import Path

from secure_pipeline.names import LIVE_INPUT_DRIFT
from secure_pipeline.registry.decisions import champion, decisions
from secure_pipeline.storage.audit import AuditLog
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline_tests.monitoring import recovery_scenario


def test_drift_on_a_new_champion_rolls_it_back_and_the_traffic_follows(
    home: Path, reference_run, tmp_path: Path
) -> None:
    recovery = recovery_scenario.run(home, tmp_path / "work", reference_run.version)
    version_a, version_b = recovery.versions
    good_slot, bad_slot = recovery.slots
    assert recovery.verdicts[LIVE_INPUT_DRIFT] is False, recovery.verdicts
    # The previous champion is champion again: a new signed decision, by the rollback.
    store = LocalSnapshotStore(home / "store")
    current = champion(decisions(store, trust_policy(), "adult")[0])
    assert current is not None
    assert current.version == version_a
    assert current.facts["reason"] == "rollback"
    assert current.facts["previous_champion"]["version"] == version_b
    # All traffic on its slot; the bad slot stopped.
    assert recovery.outcome["live"] == good_slot
    served = {slot for (status, slot) in recovery.answers_after if status == 200}
    assert served == {good_slot}, recovery.answers_after
    assert recovery.answers_after[(200, good_slot)] > 0
    # The audit trail says what happened and why.
    records = list(AuditLog(store).verified_records())
    events = [r.event for r in records]
    assert events[-2:] == ["promotion.rollback", "serving.rolled_back"], events[-6:]
    details = records[-1].details
    assert details["from"] == version_b
    assert details["to"] == version_a
    assert LIVE_INPUT_DRIFT in details["checks"]
    assert details["slot"] == good_slot
    phases = recovery.phases()
    assert 0 < phases["time to recover"] < 120, phases
