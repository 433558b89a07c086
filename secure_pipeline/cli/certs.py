"""``secure-pipeline certs``: development certificates of the inference gateway."""

from pathlib import Path

import click

from secure_pipeline import environment as env
from secure_pipeline.cli._common import (
    _fail,
)
from secure_pipeline.errors import ConfigurationError


@click.group()
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
