"""The `secure-pipeline` console script, run as a user runs it."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.storage.audit import AuditLog, checkpoint_key, record_key
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.identities import INGEST
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.helpers import materialize

CLI = str(Path(sys.executable).parent / "secure-pipeline")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=dict(os.environ))


def _trail(home: Path, n: int = 3) -> LocalSnapshotStore:
    store = LocalSnapshotStore(home / "store")
    log = AuditLog(store)
    for i in range(n):
        log.append("snapshot.stored", signer=signer_for(INGEST), actor="cli-test",
                   details={"i": i})  # fmt: skip
    return store


def test_audit_verify_ok(isolated_env: Path) -> None:
    _trail(isolated_env)
    result = run("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "audit trail intact: 3 records" in result.stdout


def test_audit_verify_names_the_edited_record(isolated_env: Path) -> None:
    store = _trail(isolated_env)
    path = store.root / record_key(2)
    path.chmod(0o644)
    record = json.loads(path.read_bytes())
    record["details"]["i"] = 99
    path.write_text(json.dumps(record))
    result = run("audit", "verify")
    assert result.returncode == 1
    assert "audit record 2" in result.stderr
    assert "was edited" in result.stderr


def test_audit_verify_names_the_deleted_record(isolated_env: Path) -> None:
    store = _trail(isolated_env)
    (store.root / record_key(2)).unlink()
    result = run("audit", "verify")
    assert result.returncode == 1
    assert "audit record 2 is missing" in result.stderr


def test_audit_verify_with_anchor_catches_truncation(isolated_env: Path) -> None:
    store = _trail(isolated_env)
    head = json.loads((store.root / record_key(3)).read_bytes())["hash"]
    (store.root / record_key(3)).unlink()
    truncated = run("audit", "verify")  # the signed checkpoint of record 3 names it
    assert truncated.returncode == 1
    assert "ends at record 2, but a signed checkpoint exists" in truncated.stderr
    (store.root / checkpoint_key(3)).unlink()  # where deletes are possible, both can go
    assert run("audit", "verify").returncode == 0
    result = run("audit", "verify", "--anchor", f"3:{head}")
    assert result.returncode == 1
    assert "removed from the end" in result.stderr
    assert run("audit", "verify", "--anchor", "garbage").returncode == 2


def test_audit_verify_against_dagster_anchors(isolated_env: Path) -> None:
    """Audit records named in the Dagster event log must still be in the trail."""
    with dg.instance_for_test(temp_dir=str(isolated_env)) as instance:
        materialize(adult_pipeline(), instance)
    (isolated_env / "dagster.yaml").write_text(
        f"storage:\n  sqlite:\n    base_dir: {isolated_env}\n"
    )
    assert run("audit", "verify", "--dagster-anchors").returncode == 0
    store = LocalSnapshotStore(isolated_env / "store")
    for record in (store.root / "audit").rglob("*.json"):
        record.unlink()
    log = AuditLog(store)
    # a fresh chain in place of the deleted one, even by a holder of the ingest key
    log.append("snapshot.stored", signer=signer_for(INGEST), actor="rewriter")
    assert run("audit", "verify").returncode == 0
    result = run("audit", "verify", "--dagster-anchors")
    assert result.returncode == 1
    assert "rewritten" in result.stderr


def test_audit_export_csv(isolated_env: Path, tmp_path: Path) -> None:
    _trail(isolated_env)
    target = tmp_path / "audit.csv"
    result = run("audit", "export", "--format", "csv", "--output", str(target))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(target.open()))
    assert [int(r["seq"]) for r in rows] == [1, 2, 3]
    assert json.loads(rows[0]["details"]) == {"i": 0}


def test_audit_export_refuses_a_broken_trail(isolated_env: Path, tmp_path: Path) -> None:
    store = _trail(isolated_env)
    (store.root / record_key(1)).unlink()
    target = tmp_path / "audit.jsonl"
    result = run("audit", "export", "--output", str(target))
    assert result.returncode == 1
    assert not target.exists()


def test_production_without_configuration_exits_2(monkeypatch) -> None:
    monkeypatch.setenv("SECURE_PIPELINE_ENV", "production")
    result = run("audit", "verify")
    assert result.returncode == 2
    assert "SECURE_PIPELINE_S3_BUCKET is not set" in result.stderr


def test_status_after_materialization(isolated_env: Path) -> None:
    (isolated_env / "dagster.yaml").write_text(
        f"storage:\n  sqlite:\n    base_dir: {isolated_env}\n"
    )
    with dg.DagsterInstance.get() as instance:
        materialize(adult_pipeline(), instance)
    result = run("status")
    assert result.returncode == 0, result.stderr
    assert "raw_adult" in result.stdout
    assert "audit trail: 3 records, intact" in result.stdout


def test_audit_verify_without_a_trail_fails(isolated_env: Path) -> None:
    result = run("audit", "verify")
    assert result.returncode == 2
    assert "no snapshot store at" in result.stderr
    assert not (isolated_env / "store").exists()  # reading never creates a store
    (isolated_env / "store").mkdir()
    result = run("audit", "verify")
    assert result.returncode == 1
    assert "no audit records" in result.stderr
    assert run("audit", "verify", "--allow-empty").returncode == 0


def _two_pipeline_location(tmp_path: Path, monkeypatch) -> None:
    """A code location of a team's own: the reference pipeline and a second one."""
    (tmp_path / "team_location.py").write_text(
        "import dataclasses\n"
        "from secure_pipeline.reference.adult import adult_pipeline\n\n"
        "def pipelines():\n"
        "    reference = adult_pipeline()\n"
        "    return [reference, dataclasses.replace(reference, name='census')]\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("SECURE_PIPELINE_CODE_LOCATION", "team_location")


def test_a_location_with_two_pipelines_needs_a_choice(isolated_env, tmp_path, monkeypatch):
    _trail(isolated_env)
    _two_pipeline_location(tmp_path, monkeypatch)
    unchosen = run("verify", "models:/census@champion")
    assert unchosen.returncode == 2
    assert "has 2 pipelines (adult, census): choose one with --pipeline NAME" in unchosen.stderr
    unknown = run("verify", "models:/census@champion", "--pipeline", "german")
    assert unknown.returncode == 2
    assert "no pipeline 'german' in the code location (its pipelines: adult, census)" in (
        unknown.stderr
    )
    chosen = run("verify", "models:/census@champion", "--pipeline", "census")
    assert chosen.returncode == 2
    assert "no such model 'census' in the registry" in chosen.stderr
    shown = run("status")
    assert shown.returncode == 0, shown.stderr
    assert "pipeline adult" in shown.stdout
    assert "pipeline census" in shown.stdout


def test_the_cli_answers_without_tracebacks(isolated_env, tmp_path) -> None:
    _trail(isolated_env)
    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("secure-pipeline, version ")
    missing = run("audit", "export", "--output", str(tmp_path / "no" / "such" / "dir.csv"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "No such file or directory" in missing.stderr
