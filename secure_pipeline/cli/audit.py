"""``secure-pipeline audit``: verify or export the tamper-evident audit trail."""

import sys
from collections.abc import Iterator
from typing import Any

import click

from secure_pipeline.cli._common import (
    _fail,
    _store,
    _trust,
)
from secure_pipeline.errors import SecurePipelineError


def _dagster_anchors() -> dict[int, str]:
    """Audit records named in the Dagster instance: by materializations and check evaluations."""
    import dagster as dg

    from secure_pipeline.storage.io_manager import AUDIT_RECORD

    anchors: dict[int, str] = {}

    def add(metadata: Any) -> None:
        entry = metadata.get(AUDIT_RECORD)
        if entry is not None:
            seq, _, digest = str(getattr(entry, "value", entry)).partition(":")
            anchors[int(seq)] = digest

    with dg.DagsterInstance.get() as instance:
        for key in instance.get_asset_keys():
            for record in _all_materializations(instance, key):
                add(record.asset_materialization.metadata)
        cursor = None
        while True:
            records = instance.get_event_records(
                dg.EventRecordsFilter(
                    event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=cursor
                ),
                limit=1000,
                ascending=True,
            )
            for record in records:
                evaluation = record.event_log_entry.dagster_event.event_specific_data
                add(evaluation.metadata)
            if len(records) < 1000:
                return anchors
            cursor = records[-1].storage_id


def _all_materializations(instance: Any, key: Any) -> Iterator[Any]:
    import dagster as dg

    cursor = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor
        )
        yield from result.records
        if not result.has_more:
            return
        cursor = result.cursor


def _read_resume(path: str) -> Any:
    """The status an earlier run of this verifier wrote (None when there is none yet)."""
    import json
    from pathlib import Path

    from secure_pipeline.storage.audit import ChainStatus

    file = Path(path)
    if not file.exists():
        return None
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        return ChainStatus(int(document["count"]), str(document["head_hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        _fail(
            f"--resume-file {path} should hold {{count, head_hash}} written by audit verify, "
            f"found unreadable content ({exc}); delete it to verify the whole trail",
            2,
        )
        raise  # unreachable: _fail exits


def _write_resume(path: str, status: Any) -> None:
    import json
    import os
    from pathlib import Path

    file = Path(path)
    spool = file.with_name(f".{file.name}.{os.getpid()}")
    spool.write_text(
        json.dumps({"count": status.count, "head_hash": status.head_hash}), encoding="utf-8"
    )
    os.replace(spool, file)


@click.group()
def audit() -> None:
    """Verify or export the tamper-evident audit trail."""


@audit.command("verify")
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    metavar="SEQ:HASH",
    help="A record hash known from elsewhere; a trail rewritten or cut before it fails.",
)
@click.option(
    "--dagster-anchors",
    is_flag=True,
    help="Also check every audit record named in the Dagster instance's materializations.",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Accept a trail with no records (a fresh deployment); otherwise that is a failure.",
)
@click.option(
    "--deep",
    is_flag=True,
    help="Also re-verify the signature of every record inside sealed segments.",
)
@click.option(
    "--resume-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The verifier's own state: verify only what follows the status it holds (if the "
    "file exists), then write the new status to it.",
)
def audit_verify(
    anchors: tuple[str, ...],
    dagster_anchors: bool,
    allow_empty: bool,
    deep: bool,
    resume_file: str | None,
) -> None:
    """Check every record and link of the audit trail; exit 1 naming the first broken one."""
    from secure_pipeline.storage.audit import AuditLog

    resume = _read_resume(resume_file) if resume_file else None

    known: dict[int, str] = {}
    for anchor in anchors:
        seq, sep, digest = anchor.partition(":")
        if not sep or not seq.isdigit() or len(digest) != 64:
            _fail(f"--anchor must be SEQ:HASH (a number and a 64-hex hash), found {anchor!r}", 2)
        known[int(seq)] = digest
    if dagster_anchors:
        known.update(_dagster_anchors())
    store = _store()
    try:
        status = AuditLog(store).verify(known, _trust(), resume=resume, deep=deep)
    except SecurePipelineError as exc:
        _fail(f"audit trail broken: {exc}", 1)
    if status.count == 0 and not allow_empty:
        _fail(
            f"no audit records in {store.uri('audit')}: wrong store (check "
            "SECURE_PIPELINE_HOME / SECURE_PIPELINE_S3_BUCKET), or nothing has run yet "
            "(--allow-empty accepts that)",
            1,
        )
    if resume_file:
        _write_resume(resume_file, status)
    click.echo(
        f"audit trail intact: {status.count} records in {store.uri('audit')}, head "
        f"{status.head_hash}" + (f", {len(known)} anchors matched" if known else "")
    )


@audit.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True
)
def audit_export(fmt: str, output: str) -> None:
    """Write the verified audit trail as JSON lines or CSV for auditors."""
    from secure_pipeline.storage.audit import AuditLog

    store = _store()
    try:
        if output == "-":
            status = AuditLog(store).export(sys.stdout, fmt)
        else:
            import io

            buffer = io.StringIO()
            status = AuditLog(store).export(buffer, fmt)
            with open(output, "w", encoding="utf-8", newline="") as out:
                out.write(buffer.getvalue())
    except SecurePipelineError as exc:
        _fail(f"audit trail broken, nothing exported: {exc}", 1)
    click.echo(f"exported {status.count} verified records", err=True)


@audit.command("show")
@click.option("--subject", required=True, metavar="DIGEST", help="The digest records are about.")
@click.option("--json", "as_json", is_flag=True, help="One verified record per line, as JSON.")
def audit_show(subject: str, as_json: bool) -> None:
    """Show the verified audit records about one subject, found through the index."""
    from secure_pipeline.storage.audit import AuditLog

    store = _store()
    try:
        records = AuditLog(store).records_about(subject, _trust())
    except SecurePipelineError as exc:
        _fail(f"audit trail broken: {exc}", 1)
    for record in records:
        if as_json:
            click.echo(record.to_json().decode())
        else:
            click.echo(f"{record.seq:>8}  {record.ts}  {record.identity:<10} {record.event}")
    if not as_json:
        click.echo(f"{len(records)} verified records about {subject}", err=True)
