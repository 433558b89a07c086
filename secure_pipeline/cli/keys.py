"""``secure-pipeline keys`` and ``trust``: key pairs, the trust policy and its root."""

import json
from pathlib import Path

import click

from secure_pipeline.cli._common import (
    _fail,
    _trust,
)
from secure_pipeline.errors import ConfigurationError


@click.group()
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


@click.group()
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
