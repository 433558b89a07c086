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


def _pipeline(spec: str) -> Any:
    """Import ``module:attribute`` (a SecurePipeline, or a function returning one)."""
    import importlib

    module, _, attribute = spec.partition(":")
    try:
        value = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        _fail(f"cannot load pipeline {spec!r}: {exc}", 2)
    return value() if callable(value) else value


_PIPELINE_OPTION = click.option(
    "--pipeline",
    "pipeline_spec",
    default="secure_pipeline.reference.adult:adult_pipeline",
    show_default=True,
    help="The pipeline spec (module:attribute) whose policy applies.",
)


@main.command()
@_PIPELINE_OPTION
def status(pipeline_spec: str) -> None:
    """Show what the pipeline produced and where, and which versions the registry serves."""
    import dagster as dg

    from secure_pipeline.registry.assets import REGISTERED_MODEL
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
                "model_uri",
                "signer",
                "champion",
            ):
                if name in metadata:
                    click.echo(f"  {name}: {metadata[name].value}")
    if dg.AssetKey(REGISTERED_MODEL) in keys:  # no registry to ask before a model is registered
        _registry_status(_pipeline(pipeline_spec).name)
    try:
        chain = AuditLog(store).verify()
    except SecurePipelineError as exc:
        _fail(f"audit trail broken: {exc}", 1)
    click.echo(f"\naudit trail: {chain.count} records, intact, head {chain.head_hash}")


def _registry_status(name: str) -> None:
    """The registry's aliases as they are now (a rollback moves them after the last run)."""
    from secure_pipeline.promotion.gate import CHALLENGER, CHAMPION
    from secure_pipeline.registry.mlflow_registry import alias_version

    aliases = {alias: alias_version(name, alias) for alias in (CHAMPION, CHALLENGER)}
    click.echo(f"\nregistry ({name}, now):")
    for alias, version in aliases.items():
        click.echo(f"  {alias}: " + (f"models:/{name}/{version}" if version else "none"))


@main.command()
@click.argument("model_ref")
@_PIPELINE_OPTION
@click.option(
    "--offline",
    is_flag=True,
    help="Verify the bundle alone: signature, files, recorded verdicts, policy. Skip re-hashing "
    "lineage snapshots and looking verdicts up in the audit trail.",
)
def verify(model_ref: str, pipeline_spec: str, offline: bool) -> None:
    """Verify a model: models:/name@alias, models:/name/version, or a bundle directory.

    Checks the signature against the trust policy, every file's digest, that no file is a
    pickle, the lineage (every snapshot exists and re-hashes, every required check passed for
    this model digest, as the audit trail records) and today's policy. Exit 1 on any failure.
    """
    from secure_pipeline.registry.mlflow_registry import version_tags
    from secure_pipeline.registry.signing import trust_policy_from_environment
    from secure_pipeline.registry.verification import resolve, verify_bundle_dir
    from secure_pipeline.storage.audit import AuditLog

    pipeline = _pipeline(pipeline_spec)
    store = None if offline else _store()
    try:
        trust = trust_policy_from_environment()
        with resolve(model_ref) as resolved:
            tags = (
                version_tags(resolved.name, resolved.version)
                if resolved.name and resolved.version
                else None
            )
            result = verify_bundle_dir(
                resolved.directory,
                trust=trust,
                pipeline=pipeline,
                store=store,
                audit=AuditLog(store) if store is not None else None,
                registry_tags=tags,
            )
            where = (
                f"{resolved.name} version {resolved.version}"
                + (f" (@{resolved.alias})" if resolved.alias else "")
                if resolved.name
                else str(resolved.directory)
            )
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    click.echo(f"{model_ref} -> {where}")
    click.echo(result.report())
    if not result.ok:
        _fail(f"{model_ref} failed verification", 1)
    click.echo(f"verified: model {result.model_sha256}, signed by {result.signer}")


@main.command()
@click.argument("model_ref")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The approver's PEM EC private key.")  # fmt: skip
@click.option("--approver", required=True, help="The approver's name in the trust policy.")
@click.option("--reason", default="", help="Why the model is approved.")
@_PIPELINE_OPTION
def approve(model_ref: str, key_path: str, approver: str, reason: str, pipeline_spec: str) -> None:
    """Sign an approval of MODEL_REF, bound to its model digest, after verifying it."""
    from secure_pipeline.promotion.approvals import sign_approval, store_approval
    from secure_pipeline.registry.signing import trust_policy_from_environment
    from secure_pipeline.registry.verification import resolve, verify_bundle_dir
    from secure_pipeline.storage.audit import AuditLog

    pipeline = _pipeline(pipeline_spec)
    store = _store()
    audit = AuditLog(store)
    try:
        with resolve(model_ref) as resolved:
            result = verify_bundle_dir(
                resolved.directory,
                trust=trust_policy_from_environment(),
                pipeline=pipeline,
                store=store,
                audit=audit,
            )
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    if not result.ok:
        click.echo(result.report(), err=True)
        _fail(f"refusing to approve {model_ref}: it does not verify", 1)
    document = sign_approval(
        Path(key_path),
        model_sha256=str(result.model_sha256),
        bundle_digest=str(result.bundle_digest),
        approver=approver,
        reason=reason,
    )
    key = store_approval(store, str(result.model_sha256), document)
    record = audit.append(
        "approval.recorded",
        actor=f"approver:{approver}",
        subject=result.model_sha256,
        details={"approval": key, "reason": reason[:200]},
    )
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
    from secure_pipeline.registry.signing import generate_key, key_fingerprint

    try:
        public = generate_key(Path(private_key), dev=dev)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    click.echo(f"private key: {private_key} (keep it secret)")
    click.echo(f"public key:  {public}")
    click.echo(f"fingerprint: {key_fingerprint(public.read_bytes())}")


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


@main.command()
@click.argument("model_ref")
@click.option("--slot", type=click.Choice(["blue", "green"]), required=True, help="The slot.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--max-rows", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(1), default=256 * 1024, show_default=True)
@_PIPELINE_OPTION
def serve(
    model_ref: str, slot: str, host: str, port: int, max_rows: int, max_body_bytes: int,
    pipeline_spec: str,
) -> None:  # fmt: skip
    """Serve one model version as a blue or green slot (behind the gateway).

    MODEL_REF is pinned: models:/name/N (or a bundle directory). The model is verified before it
    is loaded; /readyz answers 200 only after that, and a model that fails never serves.
    """
    from secure_pipeline.serving.server import SERVING_REQUIRED, ServingLimits
    from secure_pipeline.serving.server import serve as run

    try:
        env.validate(required=SERVING_REQUIRED)
    except ConfigurationError as exc:
        _fail(str(exc), 2)
    limits = ServingLimits(max_body_bytes=max_body_bytes, max_rows=max_rows)
    run(model_ref, slot=slot, host=host, port=port, pipeline=_pipeline(pipeline_spec),
        limits=limits)  # fmt: skip


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
    _IDENTITIES (`secure-pipeline certs init` makes development ones).
    """
    from secure_pipeline.promotion.bluegreen import up
    from secure_pipeline.promotion.gate import CHAMPION
    from secure_pipeline.registry.mlflow_registry import alias_version
    from secure_pipeline.serving.gateway import GatewayConfig, Slot

    pipeline = _pipeline(pipeline_spec)
    try:
        env.validate()
        if model_ref is None:
            version = alias_version(pipeline.name, CHAMPION)
            if version is None:
                raise ConfigurationError(f"{pipeline.name} has no champion: promote one first")
            model_ref = f"models:/{pipeline.name}/{version}"
        slots = (Slot("blue", f"127.0.0.1:{blue_port}", 100),
                 Slot("green", f"127.0.0.1:{green_port}", 0))  # fmt: skip
        base = GatewayConfig.from_environment(listen=listen, slots=slots,
                                              rate_per_second=rate, burst=burst)  # fmt: skip
        state = up(
            Path(directory), pipeline, model_ref=model_ref, listen=listen,
            slot_ports={"blue": blue_port, "green": green_port},
            server_cert=base.server_cert, server_key=base.server_key, client_ca=base.client_ca,
            identities=base.identities, routes=base.routes, rate_per_second=rate, burst=burst,
            pipeline_spec=pipeline_spec,
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
