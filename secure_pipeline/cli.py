"""The ``secure-pipeline`` command line.

Commands read the same environment as the code location (``SECURE_PIPELINE_ENV`` and the
variables in the README), so they look at the same store the pipeline writes to.

Exit codes: 0 success, 1 a check failed (broken audit trail, tampered data), 2 bad usage or
configuration.
"""

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SecurePipelineError


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _store() -> Any:
    """The configured store; a local store must already exist (commands only read it)."""
    from secure_pipeline.storage.resources import LocalSnapshotStoreResource, store_resource

    try:
        environment = env.validate()
        resource = store_resource(environment, resolve=True)
        if isinstance(resource, LocalSnapshotStoreResource) and not Path(resource.root).is_dir():
            raise ConfigurationError(
                f"no snapshot store at {resource.root}: run the pipeline first (`make demo`), or "
                "point SECURE_PIPELINE_HOME (or DAGSTER_HOME) at the pipeline's state"
            )
        return resource.get_store()
    except ConfigurationError as exc:
        _fail(str(exc), 2)


def _dagster_anchors() -> dict[int, str]:
    """Audit records named by materializations in the Dagster instance (``$DAGSTER_HOME``)."""
    import dagster as dg

    from secure_pipeline.storage.io_manager import AUDIT_RECORD

    anchors: dict[int, str] = {}
    with dg.DagsterInstance.get() as instance:
        for key in instance.get_asset_keys():
            for record in _all_materializations(instance, key):
                entry = record.asset_materialization.metadata.get(AUDIT_RECORD)
                if entry is not None:
                    seq, _, digest = str(entry.value).partition(":")
                    anchors[int(seq)] = digest
    return anchors


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


@click.group()
def main() -> None:
    """Secure ML pipeline tools: audit trail, status."""


@main.group()
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
def audit_verify(anchors: tuple[str, ...], dagster_anchors: bool, allow_empty: bool) -> None:
    """Check every record and link of the audit trail; exit 1 naming the first broken one."""
    from secure_pipeline.storage.audit import AuditLog

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
        status = AuditLog(store).verify(known)
    except SecurePipelineError as exc:
        _fail(f"audit trail broken: {exc}", 1)
    if status.count == 0 and not allow_empty:
        _fail(
            f"no audit records in {store.uri('audit')}: wrong store (check "
            "SECURE_PIPELINE_HOME / SECURE_PIPELINE_S3_BUCKET), or nothing has run yet "
            "(--allow-empty accepts that)",
            1,
        )
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


@main.command()
def status() -> None:
    """Show what the reference pipeline produced and where (latest materializations)."""
    import dagster as dg

    from secure_pipeline.storage.audit import AuditLog
    from secure_pipeline.storage.io_manager import SHA256, URI

    store = _store()
    click.echo(f"environment: {env.current_environment().value}")
    click.echo(f"snapshot store: {store.uri('snapshots')}")
    with dg.DagsterInstance.get() as instance:
        click.echo(f"dagster instance: {instance.root_directory}")
        keys = sorted(instance.get_asset_keys(), key=lambda k: k.to_user_string())
        if not keys:
            click.echo("nothing materialized yet: run `make demo`")
        for key in keys:
            result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1)
            if not result.records:
                continue
            record = result.records[0]
            metadata = record.asset_materialization.metadata
            click.echo(f"\n{key.to_user_string()}  (run {record.run_id})")
            for name in (
                SHA256,
                URI,
                "bytes",
                "dagster/row_count",
                "provenance_uri",
                "quarantine_uri",
                "test_roc_auc",
                "mlflow_run",
            ):
                if name in metadata:
                    click.echo(f"  {name}: {metadata[name].value}")
    try:
        chain = AuditLog(store).verify()
    except SecurePipelineError as exc:
        _fail(f"audit trail broken: {exc}", 1)
    click.echo(f"\naudit trail: {chain.count} records, intact, head {chain.head_hash}")
