"""``secure-pipeline serve`` (one model slot) and ``serving`` (blue-green deployments)."""

import json
from pathlib import Path

import click

from secure_pipeline import environment as env
from secure_pipeline.cli._common import (
    _PIPELINE_OPTION,
    _fail,
    _pipeline,
    _store,
    _trust,
    _user,
)
from secure_pipeline.errors import ConfigurationError, PolicyViolation

_TLS_FILE = click.Path(dir_okay=False)


@click.command()
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

    MODEL_REF is pinned: models:/name/N, oci://host/repository@sha256:... (pulled from an OCI
    registry by digest; a tag is resolved to its digest first) or a bundle directory. The model
    is verified before it is loaded; /readyz answers 200 only after that, and a model that
    fails never serves.

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


@click.group()
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
    from secure_pipeline.registry.decisions import champion, decisions
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
