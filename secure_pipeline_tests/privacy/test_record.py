"""The record of processing (GDPR Art. 30(1)), from a real ingestion and a real erasure."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from secure_pipeline.canonical import canonical_json
from secure_pipeline.cli import main
from secure_pipeline.errors import AuditChainError
from secure_pipeline.privacy.erasure import erase
from secure_pipeline.privacy.record import record_of_processing, render_markdown
from secure_pipeline.storage.audit import MAX_DETAILS_BYTES, AuditLog, record_key
from secure_pipeline.storage.local import LocalSnapshotStore
from secure_pipeline.trust.identities import PRIVACY, STAGE_IDENTITIES
from secure_pipeline.trust.policy import trust_policy
from secure_pipeline.trust.signers import signer_for
from secure_pipeline_tests.conftest import overwrite_raw, pointed_at
from secure_pipeline_tests.privacy.erasure_helpers import Run, new_run

ERASED = [f"C{i:05d}" for i in range(10, 160)]
CLI_PIPELINE = "secure_pipeline_tests.privacy.erasure_helpers:cli_pipeline"
ROLES = {
    "case_id": "identifier",
    "full_name": "personal",
    "checking": "feature",
    "personal_status": "sensitive",
    "duration": "feature",
    "opened": "feature",
    "applied": "feature",
    "name_copy": "ignore",
    "risk": "label",
}


def _described(run: Run) -> Run:
    """The run's pipeline with a pseudonymised name, a sensitive column and descriptions."""
    columns = tuple(
        dataclasses.replace(
            c,
            role=ROLES[c.name],
            pseudonymise=c.name == "full_name",
            description=f"the applicant's {c.name.replace('_', ' ')}",
        )
        for c in run.pipeline.schema.columns
    )
    schema = dataclasses.replace(run.pipeline.schema, columns=columns)
    return dataclasses.replace(run, pipeline=dataclasses.replace(run.pipeline, schema=schema))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, dev_keys: Path) -> Run:
    """One ingestion (no model) and one request erasing 150 applicants."""
    run = _described(new_run(tmp_path_factory, "record"))
    with pointed_at(run.home, dev_keys):
        assert run.ingest().success
        erase(
            run.store(), run.pipeline, trust_policy(), ERASED, now=True,
            signer=signer_for(PRIVACY),
        )  # fmt: skip
    return run


@pytest.fixture
def at(recorded: Run, monkeypatch: pytest.MonkeyPatch) -> Run:
    return recorded.point(monkeypatch)


def test_the_record_states_every_article_30_field(at: Run) -> None:
    record = record_of_processing(at.pipeline, at.store(), trust_policy())
    assert record["controller"] == "Example Lending Ltd, privacy@example.test"
    assert record["purpose"] == "credit risk scoring of loan applications"
    assert record["legal_basis"] == "contract (Art. 6(1)(b))"
    assert record["data_subjects"] == ["loan applicants"]
    assert record["missing"] == []
    data = record["personal_data"]
    assert {c["name"]: c["role"] for c in data["columns"]} == ROLES
    by_name = {c["name"]: c for c in data["columns"]}
    assert by_name["case_id"]["personal"]
    assert by_name["case_id"]["identifier"]
    assert by_name["full_name"]["pseudonymised"]
    assert "keyed pseudonym" in by_name["full_name"]["stored"]
    assert by_name["personal_status"]["sensitive"]
    assert not by_name["checking"]["personal"]
    assert "dropped at entry" in by_name["name_copy"]["stored"]
    assert by_name["duration"]["description"] == "the applicant's duration"
    assert data["identifiers"] == ["case_id"]
    assert data["personal"] == data["pseudonymised"] == ["full_name"]
    assert data["sensitive"] == ["personal_status"]
    recipients = [r["identity"] for r in record["recipients"]]
    assert recipients[: len(STAGE_IDENTITIES)] == list(STAGE_IDENTITIES)
    assert any("inference gateway" in r["recipient"] for r in record["recipients"])
    assert "credit risk team" in [r["recipient"] for r in record["recipients"]]
    assert record["retention"]["days"] is None
    assert record["retention"]["text"].startswith("until erased")
    measures = " ".join(record["security_measures"])
    for control in ("TLS 1.3", "AES-256-GCM", "keyring provider 'local'", "Pseudonymisation",
                    "Subject index", "Audit trail", "membership-inference"):  # fmt: skip
        assert control in measures, control
    erasures = record["erasures"]
    assert erasures["requests"] == 1
    assert erasures["subjects"] == len(ERASED)
    assert len(erasures["times"]) == 1
    assert erasures["snapshots_shredded"]["erasure"] >= 3
    json.dumps(record)  # JSON-ready
    assert all(i not in json.dumps(record) for i in ERASED)


def test_a_large_request_is_receipted_in_parts_that_fit_the_audit_trail(at: Run) -> None:
    records = [
        r for r in AuditLog(at.store()).verified_records(trust_policy())
        if r.event == "privacy.erasure"
    ]  # fmt: skip
    assert len(records) > 1
    assert {r.details["request"] for r in records} == {records[0].details["request"]}
    assert [r.details["part"] for r in records] == list(range(1, len(records) + 1))
    assert {r.details["parts"] for r in records} == {len(records)}
    assert sum(len(r.details["subjects"]) for r in records) == len(ERASED)
    for record in records:
        assert len(canonical_json(dict(record.details))) <= MAX_DETAILS_BYTES


def test_the_record_follows_the_spec(at: Run) -> None:
    kept = dataclasses.replace(
        at.pipeline, source=dataclasses.replace(at.pipeline.source, retention_days=90),
        privacy=dataclasses.replace(at.pipeline.privacy, controller="", legal_basis=""),
    )  # fmt: skip
    record = record_of_processing(kept, at.store(), trust_policy())
    assert record["retention"]["days"] == 90
    assert record["retention"]["text"].startswith("90 days after ingestion")
    assert record["missing"] == ["controller", "legal_basis"]
    assert "**Incomplete**" in render_markdown(record)


def test_the_markdown_lists_every_column_and_the_erasures(at: Run) -> None:
    text = render_markdown(record_of_processing(at.pipeline, at.store(), trust_policy()))
    for name, role in ROLES.items():
        assert f"| `{name}` | {role}" in text
    assert "| `case_id` | identifier | string | yes | no |" in text
    assert "| `full_name` | personal | string | yes | yes |" in text
    assert f"- Requests: 1 ({len(ERASED)} data subjects, by hashed identifier)" in text
    assert "## Technical and organisational security measures" in text


def test_erasures_are_reported_only_from_a_verified_trail(at: Run, tmp_path: Path) -> None:
    copy = LocalSnapshotStore(shutil.copytree(at.home / "store", tmp_path / "store"))
    path = copy.root / record_key(1)
    record = json.loads(path.read_bytes())
    record["details"]["new"] = not record["details"].get("new")
    overwrite_raw(copy, record_key(1), json.dumps(record).encode())
    with pytest.raises(AuditChainError, match="audit record 1"):
        record_of_processing(at.pipeline, copy, trust_policy())


def test_the_command_line_prints_the_record(at: Run) -> None:
    runner = CliRunner()
    as_json = runner.invoke(
        main, ["privacy", "record", "--pipeline", CLI_PIPELINE, "--format", "json"]
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["erasures"]["requests"] == 1
    as_md = runner.invoke(main, ["privacy", "record", "--pipeline", CLI_PIPELINE])
    assert as_md.exit_code == 0, as_md.output
    assert as_md.output.startswith("# Record of processing activities (GDPR Art. 30(1)): credit")
    unknown = runner.invoke(main, ["privacy", "record", "--pipeline", "nosuch"])
    assert unknown.exit_code == 2
