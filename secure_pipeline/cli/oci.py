"""``secure-pipeline oci``: signed models in OCI registries (push, verify, pull, mirror)."""

import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from secure_pipeline.cli._common import _PIPELINE_OPTION, _fail, _pipeline, _store, _trust, _user
from secure_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from secure_pipeline.registry.evidence import Evidence


@click.group()
def oci() -> None:
    """Signed models in OCI registries: push, verify, pull by digest, mirror (air gap).

    Registries are reached over TLS 1.3 only (CAs: SECURE_PIPELINE_OCI_CA_BUNDLE, else the
    system's), with credentials from SECURE_PIPELINE_OCI_USERNAME/PASSWORD or the docker config.
    """


@oci.command()
@_PIPELINE_OPTION
@click.argument("model_ref")
@click.argument("target")
def push(pipeline_spec: str | None, model_ref: str, target: str) -> None:
    """Verify MODEL_REF with its whole evidence chain, push it to TARGET (oci://host/repo:tag).

    The bundle becomes a ModelPack artifact (weights, config, model card, lineage as typed
    layers); the model-signing bundle and the evidence (registration, gate decision, approvals,
    the release identity's signed push record) are attached as referrers. Prints the artifact
    by digest: refer to it that way.
    """
    from secure_pipeline.registry.oci import push as push_model
    from secure_pipeline.trust.identities import RELEASE
    from secure_pipeline.trust.signers import signer_for

    pipeline = _pipeline(pipeline_spec)
    store, trust = _store(), _trust()
    result = push_model(
        model_ref, target, pipeline=pipeline, trust=trust, store=store,
        signer=signer_for(RELEASE), actor=f"secure-pipeline oci push ({_user()})",
    )  # fmt: skip
    click.echo(f"pushed {result.name} version {result.version} as {target}")
    click.echo(str(result.pinned))


def _verified(
    reference: str, pipeline_spec: str | None, offline: bool, promoted: bool
) -> "AbstractContextManager[Evidence]":
    """The verify-reference context for a command's options."""
    from secure_pipeline.registry.evidence import verify_reference

    if not reference.startswith("oci://"):
        _fail(f"{reference!r}: expected oci://host/repository@sha256:... (or :tag)", 2)
    pipeline = _pipeline(pipeline_spec) if pipeline_spec or not offline else None
    store = None if offline else _store()
    return verify_reference(
        reference, pipeline=pipeline, trust=_trust(), store=store,
        require="promoted" if promoted else None,
    )  # fmt: skip


_OFFLINE = click.option(
    "--offline",
    is_flag=True,
    help="Verify from the registry alone (an air-gapped site): the bundle and the evidence the "
    "artifact carries, not the store's records.",
)
_PROMOTED = click.option(
    "--promoted",
    is_flag=True,
    help="Also require the gate's signed decision admitting this bundle (what the model "
    "server requires).",
)


@oci.command()
@_PIPELINE_OPTION
@_OFFLINE
@_PROMOTED
@click.argument("reference")
def verify(pipeline_spec: str | None, offline: bool, promoted: bool, reference: str) -> None:
    """Pull REFERENCE by digest and verify it; exit 1 when any step fails."""
    with _verified(reference, pipeline_spec, offline, promoted) as evidence:
        pulled = evidence.resolved.oci
        click.echo(f"{reference} -> {pulled.pinned}")
        click.echo(evidence.report())
    if not evidence.ok:
        _fail(f"{reference} failed verification", 1)
    click.echo(
        f"verified: {pulled.pinned}, model {evidence.verification.model_sha256}, signed by "
        f"{evidence.verification.signer}"
    )


@oci.command()
@_PIPELINE_OPTION
@_OFFLINE
@_PROMOTED
@click.argument("reference")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def pull(
    pipeline_spec: str | None, offline: bool, promoted: bool, reference: str, directory: Path
) -> None:
    """Pull and verify REFERENCE, then write the verified bundle to DIRECTORY (must not exist).

    Nothing is written when verification fails.
    """
    if directory.exists():
        raise ConfigurationError(f"{directory} exists: pull into a new directory")
    with _verified(reference, pipeline_spec, offline, promoted) as evidence:
        if not evidence.ok:
            click.echo(evidence.report(), err=True)
            _fail(f"{reference} failed verification; nothing written", 1)
        shutil.copytree(evidence.resolved.directory, directory)
        pinned = evidence.resolved.oci.pinned
    click.echo(f"verified {pinned}; bundle written to {directory}")


@oci.command()
@click.argument("source")
@click.argument("target")
def mirror(source: str, target: str) -> None:
    """Copy SOURCE with every referrer to TARGET (oci://host/repo[:tag]), e.g. for an air gap.

    The source is verified before copying and the copy verified at the target from the target
    alone (offline, the same trust policy): what arrives verifies where it is used.
    """
    from secure_pipeline.registry.oci import mirror as mirror_model

    copy = mirror_model(source, target, trust=_trust())
    click.echo(f"mirrored {source}; the copy verifies at the target")
    click.echo(str(copy))
