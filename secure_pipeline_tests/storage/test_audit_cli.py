"""`secure-pipeline audit verify --resume-file/--deep` and `audit show --subject`, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

from secure_pipeline.storage.audit import AuditLog, ChainStatus, index_prefix
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.identities import INGEST
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import overwrite_raw

CLI = str(Path(sys.executable).parent / "secure-pipeline")
SUBJECT = "a" * 64


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=dict(os.environ))


def _append(store: LocalSnapshotStore, n: int, subject: str | None = None) -> None:
    log = AuditLog(store)
    for i in range(n):
        log.append("snapshot.stored", signer=signer_for(INGEST), actor="cli", subject=subject,
                   details={"i": i})  # fmt: skip


def test_resume_file_holds_the_verifiers_status(isolated_env: Path, tmp_path: Path) -> None:
    store = LocalSnapshotStore(isolated_env / "store")
    _append(store, 3)
    state = tmp_path / "audit-status.json"
    first = run("audit", "verify", "--resume-file", str(state), "--deep")
    assert first.returncode == 0, first.stderr
    assert json.loads(state.read_text())["count"] == 3
    _append(store, 2)
    second = run("audit", "verify", "--resume-file", str(state))
    assert second.returncode == 0, second.stderr
    assert "5 records" in second.stdout
    assert json.loads(state.read_text())["count"] == 5
    # A status naming another head (the trail was rewritten since): refused.
    state.write_text(json.dumps({"count": 5, "head_hash": "b" * 64}))
    refused = run("audit", "verify", "--resume-file", str(state))
    assert refused.returncode == 1
    assert "resume status" in refused.stderr
    assert ChainStatus(5, "b" * 64).head_hash in state.read_text()  # not overwritten


def test_show_lists_the_verified_records_about_a_subject(isolated_env: Path) -> None:
    store = LocalSnapshotStore(isolated_env / "store")
    _append(store, 2)
    _append(store, 2, SUBJECT)
    shown = run("audit", "show", "--subject", SUBJECT, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["seq"] for line in shown.stdout.splitlines()] == [3, 4]
    overwrite_raw(store, f"{index_prefix(SUBJECT)}{1:012d}", b"c" * 64)
    forged = run("audit", "show", "--subject", SUBJECT)
    assert forged.returncode == 1
    assert "index marker" in forged.stderr
