"""Commands on a pipeline's models: status, verify, evidence, approve, rollback."""

import json
from pathlib import Path
from typing import Any

import click

from secure_pipeline import environment as env
from secure_pipeline.cli._common import (
    _PIPELINE_OPTION,
    _fail,
    _location_pipelines,
    _pipeline,
    _store,
    _trust,
    _user,
)
from secure_pipeline.errors import ConfigurationError, SecurePipelineError


@click.command()
@_PIPELINE_OPTION
def status(pipeline_spec: str | None) -> None:
    """Show, per pipeline, each asset's latest snapshot and check verdicts, and the champion.

    Exits 1 when the latest model of a pipeline failed a blocking gate (or the audit trail is
    broken), so a CI job can stop on it.
    """
    import dagster as dg

    from secure_pipeline.storage.audit import AuditLog

    store = _store()
    click.echo(f"environment: {env.current_environment().value}")
    click.echo(f"snapshot store: {store.uri('snapshots')}")
    pipelines = (
        [_pipeline(pipeline_spec)]
        if pipeline_spec
        else sorted(_location_pipelines().values(), key=lambda p: p.name)
    )
    failed: list[str] = []
    with dg.DagsterInstance.get() as instance:
        click.echo(f"dagster instance: {instance.root_directory}")
        for pipeline in pipelines:
            failed += _pipeline_status(instance, pipeline, store)
    try:
        chain = AuditLog(store).verify(trust=_trust())
    except SecurePipelineError as exc:
        _fail(f"audit trail broken: {exc}", 1)
    click.echo(f"\naudit trail: {chain.count} records, intact, head {chain.head_hash}")
    if failed:
        _fail("the latest model failed a gate: " + "; ".join(failed), 1)


def _pipeline_status(instance: Any, pipeline: Any, store: Any) -> list[str]:
    """Print one pipeline's assets in lineage order; return the failed gates of its model."""
    import dagster as dg

    from secure_pipeline import names
    from secure_pipeline.orchestration.sensors import latest_evaluation
    from secure_pipeline.storage.io_manager import SHA256

    keys = pipeline.names
    click.echo(f"\npipeline {pipeline.name}")
    # Each asset in lineage order, with the checks shown beside it.
    rows = [
        (keys.raw, (names.PROVENANCE_COMPLETE, names.SCHEMA_CONFORMS)),
        (keys.validated, (names.REJECT_RATE, names.EXPECTATIONS_MET)),
        (keys.features, names.REQUIRED_CHECKS["features"]),
        (keys.trained_model, names.REQUIRED_CHECKS["model"]),
        (keys.registered_model, (names.SIGNATURE_VERIFIES,)),
        (keys.promoted_model, ()),
    ]
    failed: list[str] = []
    for key, checks in rows:
        record = instance.get_latest_materialization_event(key)
        if record is None:
            click.echo(f"  {key.to_user_string():<28} not materialized yet")
            continue
        metadata = record.asset_materialization.metadata
        # A partitioned asset: its latest day, and that day's checks.
        day = record.asset_materialization.partition
        facts = [day or "", str(metadata[SHA256].value)[:12] if SHA256 in metadata else ""]
        for name in ("dagster/row_count", "test_roc_auc", "model_uri", "champion"):
            if name in metadata:
                facts.append(f"{name.removeprefix('dagster/')} {metadata[name].value}")
        click.echo(f"  {key.to_user_string():<28} {'  '.join(f for f in facts if f)}")
        for check in checks:
            evaluation = latest_evaluation(instance, dg.AssetCheckKey(key, check), day)
            verdict = evaluation.evaluation if evaluation else None
            # A planned check that has not run yet (or never did) leaves a record without one.
            if not isinstance(verdict, dg.AssetCheckEvaluation):
                click.echo(f"    {check:<28} not evaluated")
                continue
            severity = verdict.severity.value if verdict.severity else "ERROR"
            shown = "passed" if verdict.passed else f"FAILED ({severity})"
            click.echo(f"    {check:<28} {shown}")
            if key == keys.trained_model and not verdict.passed and severity == "ERROR":
                failed.append(f"{pipeline.name}: {check}")
    if instance.get_latest_materialization_event(keys.registered_model) is not None:
        _registry_status(pipeline.name, store)
    return failed


def _registry_status(name: str, store: Any) -> None:
    """The signed champion and the registry's aliases as they are now."""
    from secure_pipeline.names import CHALLENGER, CHAMPION
    from secure_pipeline.registry.decisions import champion, decisions
    from secure_pipeline.registry.mlflow_registry import alias_version

    history, rejected = decisions(store, _trust(), name)
    current = champion(history)
    click.echo(f"\nregistry ({name}, now):")
    click.echo(
        "  champion (signed decision): "
        + (f"models:/{name}/{current.version} ({current.sha256[:12]})" if current else "none")
    )
    for alias in (CHAMPION, CHALLENGER):
        version = alias_version(name, alias)
        click.echo(f"  alias {alias}: " + (f"models:/{name}/{version}" if version else "none"))
    if current is not None and alias_version(name, CHAMPION) != current.version:
        click.echo("  WARNING: the champion alias disagrees with the signed decision")
    if rejected:
        click.echo(f"  WARNING: {rejected} stored promotion decision(s) do not verify")


@click.command()
@click.argument("model_ref")
@_PIPELINE_OPTION
@click.option(
    "--offline",
    is_flag=True,
    help="Verify the bundle alone: release signature, files, the signed verdicts it carries, "
    "policy. Skip the store: snapshots, registration and promotion decisions.",
)
def verify(model_ref: str, pipeline_spec: str, offline: bool) -> None:
    """Verify a model: models:/name@alias, models:/name/version, or a bundle directory.

    Checks the release signature against the trust policy, every file's digest, that no file is
    a pickle, the lineage (every verdict signed by the identity of the stage that judged it, for
    this model's snapshots, under today's policy; every snapshot still re-hashing; no later
    signed verdict overturning one), the release identity's signed registration of this bundle
    as this version, and for @champion the gate's signed champion decision (the alias must agree
    with it), its approvals and the audit checkpoint. Exit 1 on any failure.
    """
    from secure_pipeline.registry.evidence import verify_reference

    pipeline = _pipeline(pipeline_spec)
    store = None if offline else _store()
    trust = _trust()
    try:
        with verify_reference(model_ref, pipeline=pipeline, trust=trust, store=store) as evidence:
            resolved = evidence.resolved
            where = (
                f"{resolved.name} version {resolved.version}"
                + (f" (@{resolved.alias})" if resolved.alias else "")
                if resolved.name
                else str(resolved.directory)
            )
            click.echo(f"{model_ref} -> {where}")
            click.echo(evidence.report())
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    if not evidence.ok:
        _fail(f"{model_ref} failed verification", 1)
    click.echo(
        f"verified: model {evidence.verification.model_sha256}, signed by "
        f"{evidence.verification.signer} ({trust.established})"
    )


@click.command()
@click.argument("model_ref")
@_PIPELINE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the statements as JSON lines.")
def evidence(model_ref: str, pipeline_spec: str, as_json: bool) -> None:
    """Print, verified, every attestation behind a model, from ingestion to promotion.

    For each: what it says, about which digest, and which identity's key signed it. A champion
    reference (models:/name@champion) shows the gate's champion decision too. Exit 1 when any
    link of the chain fails.
    """
    from secure_pipeline.registry.evidence import verify_reference
    from secure_pipeline.trust import attestations

    pipeline = _pipeline(pipeline_spec)
    store = _store()
    trust = _trust()
    try:
        with verify_reference(model_ref, pipeline=pipeline, trust=trust, store=store) as found:
            verification = found.verification
            lines: list[str] = [f"trust policy {trust.digest} ({trust.established})"]
            rows: list[dict[str, Any]] = []
            lineage = verification.lineage or {}
            for check in lineage.get("checks", []):
                data = (verification.directory / str(check["attestation"])).read_bytes()
                opened = attestations.open_envelope(
                    data, trust, identities=(str(check["identity"]),),
                    predicate_type=attestations.VERDICT_TYPE,
                )  # fmt: skip
                rows.append({"kind": "verdict", "sha256": opened.sha256,
                             "identity": opened.identity, "keyid": opened.keyid,
                             "statement": opened.statement})  # fmt: skip
                outcome = "passed" if check["passed"] else f"failed ({check['severity']})"
                lines.append(
                    f"verdict   {check['check']:<26} {check['asset']:<16} "
                    f"{str(check['subject'])[:12]}  {outcome:<14} signed by {opened.identity} "
                    f"({opened.keyid[:12]}) at {check['evaluated_at']}"
                )
            if verification.signer:
                lines.append(
                    f"bundle    {str(verification.bundle_digest)[:12]} model "
                    f"{str(verification.model_sha256)[:12]}  signed by {verification.signer}"
                )
            if verification.registration is not None:
                registration = verification.registration
                rows.append({"kind": "registration", "sha256": registration.sha256,
                             "identity": registration.identity, "keyid": registration.keyid,
                             "statement": registration.statement})  # fmt: skip
                lines.append(
                    f"register  {registration.predicate.get('name')} version "
                    f"{registration.predicate.get('version')} from "
                    f"{registration.predicate.get('source')}  signed by {registration.identity} "
                    f"({registration.keyid[:12]})"
                )
            for approval in found.approvals:
                lines.append(
                    f"approval  {approval.approver}: {approval.reason or '(no reason)'}  signed "
                    f"by approver:{approval.approver} ({approval.key_fingerprint[:12]}) at "
                    f"{approval.created_at}"
                )
            if found.decision is not None:
                decision = found.decision
                rows.append({"kind": "decision", "sha256": decision.sha256,
                             "identity": decision.attestation.identity,
                             "keyid": decision.attestation.keyid,
                             "statement": decision.attestation.statement})  # fmt: skip
                lines.append(f"decision  {decision.describe()}")
            if found.checkpoint is not None:
                lines.append(
                    f"audit     signed checkpoint at record {found.checkpoint[0]}, head "
                    f"{found.checkpoint[1][:16]}"
                )
    except (ConfigurationError, SecurePipelineError) as exc:
        _fail(str(exc), 2)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
    else:
        click.echo("\n".join(lines))
        click.echo(found.report())
    if not found.ok:
        _fail(f"the chain of evidence of {model_ref} does not hold", 1)


@click.command()
@click.argument("model_ref")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The approver's PEM private key (its public key in the trust policy).",
)
@click.option("--reason", default="", help="Why the model is approved.")
@_PIPELINE_OPTION
def approve(model_ref: str, key_path: str, reason: str, pipeline_spec: str) -> None:
    """Sign an approval of MODEL_REF, bound to its model and bundle digests, after verifying it.

    The key must be an approver's of the trust policy; any other key is refused before
    anything is read or written.
    """
    from secure_pipeline.registry.approvals import sign_approval, store_approval
    from secure_pipeline.registry.evidence import verify_reference
    from secure_pipeline.storage.audit import AuditLog
    from secure_pipeline.trust.signers import approver_signer

    trust = _trust()
    try:
        signer = approver_signer(Path(key_path), trust)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    pipeline = _pipeline(pipeline_spec)
    store = _store()
    try:
        with verify_reference(model_ref, pipeline=pipeline, trust=trust, store=store) as found:
            result = found.verification
            report = found.report()
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    if not found.ok:
        click.echo(report, err=True)
        _fail(f"refusing to approve {model_ref}: it does not verify", 1)
    document = sign_approval(
        signer,
        model_sha256=str(result.model_sha256),
        bundle_digest=str(result.bundle_digest),
        reason=reason,
    )
    key = store_approval(store, str(result.model_sha256), document)
    record = AuditLog(store).append(
        "approval.recorded",
        signer=signer,
        actor=f"cli:{_user()}",
        subject=result.model_sha256,
        details={"approval": key, "reason": reason[:200]},
    )
    approver = signer.identity.split(":", 1)[1]
    click.echo(f"approved model {result.model_sha256} as {approver}: {store.uri(key)}")
    click.echo(f"audit record {record.seq}")


@click.command()
@_PIPELINE_OPTION
def rollback(pipeline_spec: str) -> None:
    """Make the previous signed champion champion again, verified, with today's approvals."""
    from secure_pipeline.promotion.gate import rollback as roll_back
    from secure_pipeline.storage.audit import AuditLog

    pipeline = _pipeline(pipeline_spec)
    store = _store()
    try:
        outcome = roll_back(pipeline, pipeline.name, store=store, audit=AuditLog(store),
                            actor=f"cli:{_user()}")  # fmt: skip
    except SecurePipelineError as exc:
        _fail(str(exc), 1)
    click.echo(f"{outcome['name']}: champion {outcome['from']} -> {outcome['to']}")
