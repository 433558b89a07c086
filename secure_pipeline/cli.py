"""The ``secure-pipeline`` command line.

Commands read the same environment as the code location (``SECURE_PIPELINE_ENV`` and the
variables in the README), so they look at the same store the pipeline writes to.

Exit codes: 0 success, 1 a check failed (broken audit trail, tampered data), 2 bad usage or
configuration.
"""

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, PolicyViolation, SecurePipelineError


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


class _Commands(click.Group):
    """Commands whose failures end in one line naming what to do, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            _fail(str(exc), 2)
        except SecurePipelineError as exc:
            _fail(str(exc), 1)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(f"{exc.strerror or type(exc).__name__}{where}", 2)


@click.group(cls=_Commands)
@click.version_option(package_name="secure-pipeline", prog_name="secure-pipeline")
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
        status = AuditLog(store).verify(known, _trust())
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


def _trust() -> Any:
    """The trust policy; a missing or refused one is a configuration error (exit 2)."""
    from secure_pipeline.trust.policy import trust_policy

    try:
        return trust_policy()
    except SecurePipelineError as exc:
        _fail(str(exc), 2)


def _location_pipelines() -> dict[str, Any]:
    """The pipelines of the code location (``SECURE_PIPELINE_CODE_LOCATION``), by name.

    The module's ``pipelines()`` when it has one (the project's own code location does), else
    its ``defs`` built here: every pipeline built into definitions is remembered by name.
    """
    import importlib

    from secure_pipeline.compose import pipelines_of

    module_name = env.read("SECURE_PIPELINE_CODE_LOCATION") or "secure_pipeline.definitions"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import the code location {module_name!r}: {exc}", 2)
    listing = getattr(module, "pipelines", None)
    if callable(listing):
        return {p.name: p for p in listing()}
    defs = getattr(module, "defs", None)
    try:
        if callable(defs):
            defs = defs()
        if defs is not None:
            defs.resolve_asset_graph()
    except Exception as exc:  # noqa: BLE001 - any load error is reported, not a traceback
        _fail(f"cannot load the code location {module_name!r}: {type(exc).__name__}: {exc}", 2)
    return dict(pipelines_of())


def _pipeline(spec: str | None) -> Any:
    """The pipeline a command works on: by name from the code location, or ``module:attr``."""
    import importlib

    if spec and ":" in spec:
        module, _, attribute = spec.partition(":")
        try:
            value = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            _fail(f"cannot load pipeline {spec!r}: {exc}", 2)
        return value() if callable(value) else value
    pipelines = _location_pipelines()
    names = ", ".join(sorted(pipelines)) or "none"
    if spec is None:
        if len(pipelines) == 1:
            return next(iter(pipelines.values()))
        _fail(
            f"the code location has {len(pipelines)} pipelines ({names}): choose one with "
            "--pipeline NAME",
            2,
        )
    if spec not in pipelines:
        _fail(f"no pipeline {spec!r} in the code location (its pipelines: {names})", 2)
    return pipelines[spec]


_PIPELINE_OPTION = click.option(
    "--pipeline",
    "pipeline_spec",
    default=None,
    help="The pipeline, by name, among those of the code location (SECURE_PIPELINE_CODE_LOCATION,"
    " default secure_pipeline.definitions); the only one when there is one. Or module:attribute "
    "of a SecurePipeline spec.",
)


@main.command()
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
    from secure_pipeline.storage.io_manager import SHA256

    keys = pipeline.names
    click.echo(f"\npipeline {pipeline.name}")
    # Each asset in lineage order, with the checks shown beside it.
    rows = [
        (keys.raw, (names.PROVENANCE_COMPLETE, names.SCHEMA_CONFORMS)),
        (keys.validated, (names.REJECT_RATE, names.EXPECTATIONS_MET)),
        (keys.features, (names.FEATURE_DRIFT,)),
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
        facts = [str(metadata[SHA256].value)[:12] if SHA256 in metadata else ""]
        for name in ("dagster/row_count", "test_roc_auc", "model_uri", "champion"):
            if name in metadata:
                facts.append(f"{name.removeprefix('dagster/')} {metadata[name].value}")
        click.echo(f"  {key.to_user_string():<28} {'  '.join(f for f in facts if f)}")
        for check in checks:
            evaluation = instance.get_latest_asset_check_evaluation_record(
                dg.AssetCheckKey(key, check)
            )
            verdict = evaluation.evaluation if evaluation else None
            if verdict is None:
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
    from secure_pipeline.promotion.decisions import CHALLENGER, CHAMPION, champion, decisions
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


@main.command()
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
    from secure_pipeline.promotion.evidence import verified

    pipeline = _pipeline(pipeline_spec)
    store = None if offline else _store()
    trust = _trust()
    try:
        with verified(model_ref, pipeline=pipeline, trust=trust, store=store) as evidence:
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


@main.command()
@click.argument("model_ref")
@_PIPELINE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the statements as JSON lines.")
def evidence(model_ref: str, pipeline_spec: str, as_json: bool) -> None:
    """Print, verified, every attestation behind a model, from ingestion to promotion.

    For each: what it says, about which digest, and which identity's key signed it. A champion
    reference (models:/name@champion) shows the gate's champion decision too. Exit 1 when any
    link of the chain fails.
    """
    from secure_pipeline.promotion.evidence import verified
    from secure_pipeline.trust import attestations

    pipeline = _pipeline(pipeline_spec)
    store = _store()
    trust = _trust()
    try:
        with verified(model_ref, pipeline=pipeline, trust=trust, store=store) as found:
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


@main.command()
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
    from secure_pipeline.promotion.approvals import sign_approval, store_approval
    from secure_pipeline.promotion.evidence import verified
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
        with verified(model_ref, pipeline=pipeline, trust=trust, store=store) as found:
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


@main.command()
@_PIPELINE_OPTION
def rollback(pipeline_spec: str) -> None:
    """Point the champion alias back at the previous champion, after verifying it again."""
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


def _user() -> str:
    import getpass

    return getpass.getuser()


@main.group()
def keys() -> None:
    """Signing and approval keys."""


@keys.command("generate")
@click.argument("private_key", type=click.Path(dir_okay=False))
@click.option("--dev", is_flag=True, help="Label it a development key (refused in production).")
def keys_generate(private_key: str, dev: bool) -> None:
    """Generate an EC P-256 key pair: PRIVATE_KEY (mode 0600) and its .pub beside it."""
    from secure_pipeline.trust.keys import fingerprint, generate_key

    try:
        public = generate_key(Path(private_key), dev=dev)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    click.echo(f"private key: {private_key} (keep it secret)")
    click.echo(f"public key:  {public}")
    click.echo(f"fingerprint: {fingerprint(public.read_bytes())}")


@main.group()
def trust() -> None:
    """The trust policy: stage identities, approvers, the root that signs it."""


@trust.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--approver", "approvers", multiple=True, metavar="NAME=PUBLIC_KEY",
              help="An approver and their PEM public key (repeatable).")  # fmt: skip
def trust_init(directory: str, approvers: tuple[str, ...]) -> None:
    """Generate a root key, a key per stage identity and the signed trust policy in DIRECTORY.

    Keep root.pem offline once the policy is signed; give each stage only its own key.
    """
    from secure_pipeline.trust.identities import STAGE_IDENTITIES, signer_variable
    from secure_pipeline.trust.keys import fingerprint, generate_key
    from secure_pipeline.trust.policy import PublicKey, policy_document, sign_policy

    target = Path(directory)
    try:
        named = {}
        for entry in approvers:
            name, sep, path = entry.partition("=")
            if not sep:
                raise ConfigurationError(f"--approver must be NAME=PUBLIC_KEY, found {entry!r}")
            named[name] = Path(path).read_bytes()
        for pem in named.values():
            # Checked before any key is generated: a bad approver file leaves nothing behind.
            PublicKey.from_pem(pem)
        for name in ("root", *STAGE_IDENTITIES):
            generate_key(target / f"{name}.pem")
        document = policy_document(
            {n: [(target / f"{n}.pub").read_bytes()] for n in STAGE_IDENTITIES}, approvers=named
        )
        (target / "trust-policy.json").write_bytes(sign_policy(document, target / "root.pem"))
    except (ConfigurationError, OSError, ValueError) as exc:
        _fail(f"{type(exc).__name__}: {exc}" if isinstance(exc, ValueError) else str(exc), 2)
    click.echo(f"signed trust policy: {target / 'trust-policy.json'}")
    click.echo(f"SECURE_PIPELINE_TRUST_POLICY={target / 'trust-policy.json'}")
    click.echo(f"SECURE_PIPELINE_TRUST_ROOT={fingerprint((target / 'root.pub').read_bytes())}")
    for name in STAGE_IDENTITIES:
        click.echo(f"{signer_variable(name)}=file2:{target / f'{name}.pem'}")
    click.echo(f"keep {target / 'root.pem'} offline; give each stage only its own key")


@trust.command("sign")
@click.argument("document", type=click.Path(exists=True, dir_okay=False))
@click.option("--root-key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", required=True, type=click.Path(dir_okay=False))
def trust_sign(document: str, root_key: str, output: str) -> None:
    """Sign a trust policy DOCUMENT (plain JSON) with the root key into OUTPUT."""
    from secure_pipeline.trust.keys import fingerprint, public_pem_of
    from secure_pipeline.trust.policy import sign_policy

    try:
        content = json.loads(Path(document).read_text())
        Path(output).write_bytes(sign_policy(content, Path(root_key)))
    except (ConfigurationError, OSError, ValueError) as exc:
        _fail(str(exc), 2)
    root = fingerprint(public_pem_of(Path(root_key).read_bytes()))
    click.echo(f"signed {output}; pin its root with SECURE_PIPELINE_TRUST_ROOT={root}")


@trust.command("show")
def trust_show() -> None:
    """Show the trust policy in force: how it is established, its digest, every key."""
    policy = _trust()
    click.echo(f"trust policy: {policy.source}")
    click.echo(f"established: {policy.established}")
    click.echo(f"digest: {policy.digest} (SECURE_PIPELINE_TRUST_POLICY_SHA256 pins it)")
    for name, identity in policy.identities.items():
        for key in identity.keys:
            click.echo(f"  {name:<8} key {key.keyid}")
        for key in identity.retired_keys:
            limit = identity.retired_until.get(key.keyid)
            until = f" (audit records up to {limit})" if limit is not None else ""
            click.echo(f"  {name:<8} retired key {key.keyid}{until}")
        for _root in identity.ca_roots:
            click.echo(f"  {name:<8} CA root")
        for who, issuer in identity.sigstore:
            click.echo(f"  {name:<8} sigstore {who} ({issuer})")
    for name, key in sorted(policy.approvers.items()):
        click.echo(f"  approver {name}: key {key.keyid}")
    for name, key in sorted(policy.retired_approvers.items()):
        click.echo(f"  retired approver {name}: key {key.keyid}")


@main.group()
def certs() -> None:
    """Development certificates of the inference gateway (production takes them from the env)."""


_FORCE_OPTION = click.option(
    "--force", is_flag=True, help="Replace existing files (never done otherwise)."
)


@certs.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    default=("localhost",),
    show_default=True,
    help="DNS name of the gateway's certificate (repeatable).",
)
@click.option(
    "--server-ip",
    "server_ips",
    multiple=True,
    default=("127.0.0.1",),
    show_default=True,
    help="IP address of the gateway's certificate (repeatable).",
)
@_FORCE_OPTION  # fmt: skip
def certs_init(
    directory: str, server_names: tuple[str, ...], server_ips: tuple[str, ...], force: bool
) -> None:
    """Create a development CA and the gateway's server certificate in DIRECTORY.

    Refused in production: there the gateway's certificate, key, client CA and identities come
    from SECURE_PIPELINE_GATEWAY_CERT, _KEY, _CLIENT_CA and _IDENTITIES.
    """
    from secure_pipeline.serving.certs import init_dev_pki

    try:
        if env.current_environment() is env.Environment.PRODUCTION:
            raise ConfigurationError(
                "refusing to create a development CA in production: issue the gateway's "
                "certificates from your PKI and set SECURE_PIPELINE_GATEWAY_CERT, _KEY, "
                "_CLIENT_CA and _IDENTITIES"
            )
        pki = init_dev_pki(
            Path(directory), server_names=server_names, server_ips=server_ips, overwrite=force
        )
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    click.echo(f"development CA: {pki.ca_cert} (key {pki.ca_key}, keep it secret)")
    click.echo(f"server certificate: {pki.server_cert} (key {pki.server_key})")
    click.echo(f"next: secure-pipeline certs client {directory} NAME")


@certs.command("client")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("name")
@_FORCE_OPTION
def certs_client(directory: str, name: str, force: bool) -> None:
    """Issue a client certificate for identity NAME (spiffe://secure-pipeline/NAME)."""
    from secure_pipeline.serving.certs import issue_client_cert, spiffe_id

    try:
        cert, key = issue_client_cert(Path(directory), name, overwrite=force)
        identity = spiffe_id(name)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    click.echo(f"client certificate: {cert} (key {key}, keep it secret)")
    click.echo(f"identity: {identity}")


_TLS_FILE = click.Path(dir_okay=False)


@main.command()
@click.argument("model_ref")
@click.option("--slot", type=click.Choice(["blue", "green"]), required=True, help="The slot.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--max-rows", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(1), default=256 * 1024, show_default=True)
@click.option("--tls-cert", type=_TLS_FILE, help="PEM certificate the slot presents (required).")
@click.option("--tls-key", type=_TLS_FILE, help="Its private key (required).")
@click.option(
    "--client-ca",
    type=_TLS_FILE,
    help="The slot CA: only its client certificates are accepted (required).",
)
@_PIPELINE_OPTION
def serve(
    model_ref: str, slot: str, host: str, port: int, max_rows: int, max_body_bytes: int,
    tls_cert: str | None, tls_key: str | None, client_ca: str | None, pipeline_spec: str,
) -> None:  # fmt: skip
    """Serve one model version as a blue or green slot (behind the gateway).

    MODEL_REF is pinned: models:/name/N (or a bundle directory). The model is verified before it
    is loaded; /readyz answers 200 only after that, and a model that fails never serves.

    The slot speaks mutual TLS only (TLS 1.3): --tls-cert and --tls-key are what it presents,
    --client-ca the slot CA whose client certificates (the gateway's, the release
    controller's) it accepts. There is no plain-HTTP mode. `secure-pipeline serving up` makes
    these files for its slots itself.
    """
    from secure_pipeline.serving.server import SERVING_REQUIRED, ServingLimits, SlotTls
    from secure_pipeline.serving.server import serve as run

    given = {"--tls-cert": tls_cert, "--tls-key": tls_key, "--client-ca": client_ca}
    missing = [option for option, value in given.items() if not value]
    if missing:
        _fail(
            "the model server speaks mutual TLS only (there is no plain-HTTP mode): pass "
            "--tls-cert (the slot's certificate), --tls-key (its key) and --client-ca (the "
            "slot CA whose client certificates it accepts, never the gateway's client CA); "
            f"missing: {', '.join(missing)}",
            2,
        )
    tls = SlotTls(Path(str(tls_cert)), Path(str(tls_key)), Path(str(client_ca)))
    try:
        env.validate(required=SERVING_REQUIRED)
        if tls.problems():
            raise ConfigurationError("the slot's TLS files: " + "; ".join(tls.problems()))
        limits = ServingLimits(max_body_bytes=max_body_bytes, max_rows=max_rows)
        run(model_ref, slot=slot, tls=tls, host=host, port=port,
            pipeline=_pipeline(pipeline_spec), limits=limits)  # fmt: skip
    except ConfigurationError as exc:
        _fail(str(exc), 2)


_SERVING_DIR = click.option(
    "--dir",
    "directory",
    envvar="SECURE_PIPELINE_SERVING_DIR",
    required=True,
    type=click.Path(file_okay=False),
    help="The deployment directory (default: SECURE_PIPELINE_SERVING_DIR).",
)


@main.group()
def serving() -> None:
    """Blue-green model serving behind the mutual-TLS gateway (one host)."""


@serving.command("up")
@_SERVING_DIR
@click.option("--model", "model_ref", default=None, help="Default: the champion, pinned.")
@click.option("--listen", default="127.0.0.1:8443", show_default=True)
@click.option("--blue-port", type=click.IntRange(1, 65535), default=8101, show_default=True)
@click.option("--green-port", type=click.IntRange(1, 65535), default=8102, show_default=True)
@click.option("--rate", type=float, default=50.0, show_default=True, help="Requests/s per caller.")
@click.option("--burst", type=click.IntRange(0), default=100, show_default=True)
@_PIPELINE_OPTION
def serving_up(
    directory: str, model_ref: str | None, listen: str, blue_port: int, green_port: int,
    rate: float, burst: int, pipeline_spec: str,
) -> None:  # fmt: skip
    """Start the blue slot on the champion and the gateway in front of it.

    Certificates and identities come from SECURE_PIPELINE_GATEWAY_CERT, _KEY, _CLIENT_CA and
    _IDENTITIES (`secure-pipeline certs init` makes development ones). The slots' own mutual
    TLS (a slot CA, the slots' certificate, the gateway's and the controller's client
    certificates) is made in DIR/slot-pki when the deployment starts.
    """
    from secure_pipeline.promotion.bluegreen import up
    from secure_pipeline.promotion.decisions import champion, decisions
    from secure_pipeline.serving.gateway import DEFAULT_ROUTES, client_settings_from_environment

    pipeline = _pipeline(pipeline_spec)
    try:
        env.validate()
        # Before the registry is asked anything: a missing certificate is the likelier mistake.
        settings = client_settings_from_environment()
        if model_ref is None:
            # The signed champion decision, not the alias (which anyone with registry access
            # can move); the slot verifies that decision again before it serves.
            current = champion(decisions(_store(), _trust(), pipeline.name)[0])
            if current is None:
                raise ConfigurationError(f"{pipeline.name} has no champion: promote one first")
            version = current.version
            model_ref = f"models:/{pipeline.name}/{version}"
        state = up(
            Path(directory), pipeline, model_ref=model_ref, listen=listen,
            slot_ports={"blue": blue_port, "green": green_port},
            server_cert=settings["server_cert"], server_key=settings["server_key"],
            client_ca=settings["client_ca"], identities=settings["identities"],
            routes=DEFAULT_ROUTES, rate_per_second=rate, burst=burst,
            pipeline_spec=pipeline_spec or "",
        )  # fmt: skip
    except (ConfigurationError, PolicyViolation) as exc:
        _fail(str(exc), 2)
    click.echo(f"serving {model_ref} on slot blue behind https://{state.gateway['listen']}")


@serving.command("down")
@_SERVING_DIR
def serving_down(directory: str) -> None:
    """Stop the gateway and both slots."""
    from secure_pipeline.promotion.bluegreen import down

    try:
        down(Path(directory))
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    click.echo("stopped")


@serving.command("status")
@_SERVING_DIR
def serving_status(directory: str) -> None:
    """Show the live slot, weights and what each slot serves."""
    from secure_pipeline.promotion.bluegreen import DeploymentState, slot_readiness

    try:
        state = DeploymentState.load(Path(directory))
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    click.echo(f"gateway: https://{state.gateway['listen']}  live slot: {state.live}")
    for name, slot in sorted(state.slots.items()):
        ready, why = slot_readiness(slot.address) if slot.model_ref else ("idle", "")
        click.echo(f"  {name}: {state.weights.get(name, 0):3d} %  {slot.model_ref or '-'}  "
                   f"{ready}{': ' + why if why else ''}")  # fmt: skip


@serving.command("release")
@_SERVING_DIR
@click.argument("version")
@_PIPELINE_OPTION
def serving_release(directory: str, version: str, pipeline_spec: str) -> None:
    """Release VERSION through a canary: champion on pass, rolled back on failure."""
    from secure_pipeline.promotion.bluegreen import BlueGreen
    from secure_pipeline.storage.audit import AuditLog

    pipeline = _pipeline(pipeline_spec)
    store = _store()
    try:
        outcome = BlueGreen(Path(directory), pipeline, pipeline.canary).release(
            version, audit=AuditLog(store), actor=f"cli:{_user()}"
        )
    except (ConfigurationError, PolicyViolation) as exc:
        _fail(str(exc), 1)
    click.echo(f"version {version} passed its canary on slot {outcome.slot} and is champion")
    if outcome.verdict:
        click.echo(json.dumps(outcome.verdict.figures, indent=2))


if __name__ == "__main__":
    main()
