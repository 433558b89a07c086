"""``secure-pipeline privacy``: erase data subjects, locate them, enforce retention, Art. 30 record.

Identifiers given here are hashed at once (the pipeline's subject key) and never printed,
stored or written to the audit trail; the output names subjects by hash only.
"""

import json
from pathlib import Path
from typing import Any

import click

from secure_pipeline.cli._common import _PIPELINE_OPTION, _fail, _pipeline, _store, _trust, _user


def _signer() -> Any:
    """The privacy identity's signer (a missing or refused key is a configuration error)."""
    from secure_pipeline.trust.identities import PRIVACY
    from secure_pipeline.trust.signers import signer_for

    return signer_for(PRIVACY)


def _read_ids(subject_ids: tuple[str, ...], ids_file: str | None) -> list[str]:
    """The identifiers from the options: one per ``--subject-id``, or one per line of a file."""
    if bool(subject_ids) == bool(ids_file):
        _fail("name the subjects with --subject-id (repeatable) or --ids-file, not both", 2)
    if not ids_file:
        return list(subject_ids)
    try:
        if ids_file == "-":
            text = click.get_text_stream("stdin").read()
        else:
            text = Path(ids_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read --ids-file {ids_file}: {exc}", 2)
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        _fail(f"--ids-file {ids_file} names no identifier (one per line)", 2)
    return ids


@click.group()
def privacy() -> None:
    """Erasure (crypto-shredding), retention and the record of processing."""


@privacy.command("erase")
@_PIPELINE_OPTION
@click.option(
    "--subject-id",
    "subject_ids",
    multiple=True,
    metavar="ID",
    help="The value of the identifier column naming the subject (repeatable).",
)
@click.option(
    "--ids-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="A file of identifiers, one per line ('-': standard input).",
)
@click.option(
    "--now",
    is_flag=True,
    help="Also shred the latest ingestion at once, without waiting for a newer one that "
    "excludes the subjects (the pipeline's current data is unreadable until ingested again).",
)
@click.option(
    "--reason",
    default=None,
    help="A request reference recorded with the erasure (no personal data).",
)
def privacy_erase(
    pipeline_spec: str | None,
    subject_ids: tuple[str, ...],
    ids_file: str | None,
    now: bool,
    reason: str | None,
) -> None:
    """Erase data subjects: exclude, flag their models, destroy their snapshots' data keys.

    The subjects are excluded from every later ingestion, the models trained on them are
    flagged, and the data keys of every snapshot holding them are destroyed. Snapshots of the
    latest ingestion are shredded once a newer ingestion (which excludes the subjects) exists,
    by the daily privacy job or `privacy enforce`; --now shreds them at once. Exit 1 when a
    snapshot holding a subject is stored unencrypted (it cannot be shredded).
    """
    from secure_pipeline.privacy.erasure import DEFAULT_REASON, erase

    pipeline = _pipeline(pipeline_spec)
    identifiers = _read_ids(subject_ids, ids_file)
    store, trust, signer = _store(), _trust(), _signer()
    try:
        receipt = erase(
            store, pipeline, trust, identifiers, now=now, signer=signer,
            reason=reason or DEFAULT_REASON, actor=f"cli:privacy erase ({_user()})",
        )  # fmt: skip
    except (ValueError, PermissionError) as exc:
        _fail(str(exc), 2)
    known = len(receipt.subjects) - len(receipt.new_subjects)
    click.echo(
        f"erasure of {len(receipt.subjects)} subject(s) of {pipeline.name} recorded"
        + (f" ({known} already on the erasure list)" if known else "")
        + f"; request {receipt.request}"
    )
    for located in receipt.located:
        click.echo(
            f"  subject {located.subject_hash[:16]}…: {len(located.ingestions)} ingestion(s), "
            f"{len(located.derived)} derived snapshot(s), {len(located.models)} model(s)"
        )
    for flagged in receipt.flagged:
        versions = ", ".join(flagged.versions) or "unregistered"
        click.echo(f"  flagged model {flagged.model_sha256[:16]}… (versions {versions})")
    click.echo(f"  shredded {len(receipt.shredded)} snapshot(s)")
    if receipt.pending:
        click.echo(
            f"  {len(receipt.pending)} snapshot(s) of the latest ingestion wait for the next "
            "ingestion (it excludes the subjects); then the privacy job or `secure-pipeline "
            "privacy enforce` shreds them (or run again with --now)"
        )
    if receipt.audit_records:
        click.echo(f"  audit records {', '.join(str(s) for s in receipt.audit_records)}")
    if receipt.missing:
        click.echo(
            f"  note: {len(receipt.missing)} snapshot(s) named by the ingestions are not in the "
            f"store (nothing to shred): {', '.join(receipt.missing[:5])}",
            err=True,
        )
    if receipt.plaintext:
        _fail(
            f"{len(receipt.plaintext)} snapshot(s) holding these subjects are stored "
            f"unencrypted and cannot be crypto-shredded: {', '.join(receipt.plaintext[:5])}. "
            "Delete them by other means and record it.",
            1,
        )


@privacy.command("locate")
@_PIPELINE_OPTION
@click.option("--subject-id", "subject_id", required=True, metavar="ID",
              help="The value of the identifier column naming the subject.")  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def privacy_locate(pipeline_spec: str | None, subject_id: str, fmt: str) -> None:
    """Show every snapshot and model holding a data subject (by hash; nothing is changed)."""
    from secure_pipeline.privacy.erasure import hash_identifiers, locate

    pipeline = _pipeline(pipeline_spec)
    store, trust = _store(), _trust()
    try:
        (subject,) = hash_identifiers(pipeline, [subject_id])
    except ValueError as exc:
        _fail(str(exc), 2)
    located = locate(store, pipeline, trust, subject)
    if fmt == "json":
        click.echo(json.dumps(located.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(f"subject {subject} of {pipeline.name}")
    if not located.ingestions:
        click.echo("  held by no ingestion")
    for hold in located.ingestions:
        state = "latest" if hold.latest else "superseded"
        click.echo(
            f"  ingestion {hold.raw_sha256[:16]}… ({state}, {hold.ingested_at}; {hold.evidence})"
        )
        for member, key in hold.members.items():
            click.echo(f"    {member}: {key}")
        for derived in located.derived:
            if derived.ingestion == hold.raw_sha256:
                click.echo(f"    derived: {derived.key}")
    for model in located.models:
        versions = ", ".join(model.versions) or "unregistered"
        click.echo(f"  model {model.model_sha256} (versions {versions})")
    for problem in located.problems:
        click.echo(f"  note: {problem}")


@privacy.command("record")
@_PIPELINE_OPTION
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
def privacy_record(pipeline_spec: str | None, fmt: str) -> None:
    """Print a pipeline's record of processing activities (GDPR Art. 30(1))."""
    from secure_pipeline.privacy.record import record_of_processing, render_markdown

    pipeline = _pipeline(pipeline_spec)
    record = record_of_processing(pipeline, _store(), _trust())
    if fmt == "json":
        click.echo(json.dumps(record, indent=2, sort_keys=True))
    else:
        click.echo(render_markdown(record))


@privacy.command("enforce")
@_PIPELINE_OPTION
def privacy_enforce(pipeline_spec: str | None) -> None:
    """Complete pending erasures and apply retention now (what the daily privacy job does).

    Exit 1 when part of the work could not be done (the report says what).
    """
    from datetime import UTC, datetime

    from secure_pipeline.privacy.erasure import enforce

    pipeline = _pipeline(pipeline_spec)
    store, trust, signer = _store(), _trust(), _signer()
    report = enforce(
        store, pipeline, trust, today=datetime.now(UTC), signer=signer,
        actor=f"cli:privacy enforce ({_user()})",
    )  # fmt: skip
    by_reason: dict[str, int] = {}
    for item in report.shredded:
        by_reason[item["reason"]] = by_reason.get(item["reason"], 0) + 1
    shredded = ", ".join(f"{n} ({r})" for r, n in sorted(by_reason.items())) or "none"
    click.echo(
        f"privacy enforcement of {pipeline.name} on {report.today}: shredded {shredded}; "
        f"{len(report.pending)} pending, {len(report.spared)} spared, "
        f"{len(report.flagged)} model(s) flagged, {report.erased_subjects} erased subject(s)"
    )
    for problem in report.problems:
        click.echo(f"  problem: {problem}", err=True)
    if report.plaintext:
        click.echo(
            f"  {len(report.plaintext)} snapshot(s) are unencrypted and cannot be shredded: "
            + ", ".join(report.plaintext[:5]),
            err=True,
        )
    if report.missing:
        click.echo(
            f"  note: {len(report.missing)} snapshot(s) named by the ingestions are not in the "
            "store: " + ", ".join(report.missing[:5]),
            err=True,
        )
    if report.problems or report.plaintext:
        _fail("privacy enforcement incomplete (see above)", 1)
