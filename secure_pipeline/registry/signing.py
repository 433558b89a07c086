"""Signing model bundles with OpenSSF model_signing, and the trust policy that verifies them.

A bundle is a directory; model_signing hashes every file in it (SHA-256, one digest per file)
into a manifest, signs the manifest and writes a Sigstore bundle, ``model.sig``, beside the
files. Verification re-hashes the directory: a changed byte, an added, removed or renamed file
fails it. The same bundle verifies with the upstream ``model_signing`` command line.

Signing modes:

* ``key`` — an EC private key (P-256). The air-gapped default. Locally a development key is
  generated on first use under ``SECURE_PIPELINE_HOME/keys`` and labelled *dev*; production
  refuses it.
* ``certificate`` — a key plus its certificate and chain from an enterprise CA.
* ``sigstore`` — keyless signing with an OIDC identity (Fulcio certificate, Rekor log). It
  needs the public Sigstore services, so it cannot run offline.

The trust policy (``SECURE_PIPELINE_TRUST_POLICY``, a JSON file) pins what verifies: public
keys, CA roots, or Sigstore identity + issuer. A signature from anything else is refused.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SignatureError

SIGNATURE_FILE = "model.sig"
DEV_KEY_NAME = "dev-signing-key"
DEV_LABEL = "dev"
Mode = Literal["key", "certificate", "sigstore"]


@dataclass(frozen=True)
class Signer:
    """How bundles are signed.

    Attributes:
        mode: ``key``, ``certificate`` or ``sigstore``.
        private_key: PEM private key (key and certificate modes).
        password: Its password, if encrypted.
        certificate: The signing certificate (certificate mode).
        chain: Intermediate and root certificates (certificate mode).
        dev: Whether this is the local development key.
        name: How the signer is named in tags and audit records (never a secret).
    """

    mode: Mode
    private_key: Path | None = None
    password: str | None = None
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    dev: bool = False
    name: str = ""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the trust policy accepts.

    Attributes:
        name: Who holds the private key.
        public_key: PEM file of the public key.
        dev: Whether it is a development key (refused in production).
    """

    name: str
    public_key: Path
    dev: bool = False


@dataclass(frozen=True)
class TrustPolicy:
    """Who may sign bundles.

    Attributes:
        keys: Trusted public keys.
        ca_roots: Trusted CA certificates (certificate mode).
        sigstore: Trusted ``(identity, issuer)`` pairs (keyless mode).
        approvers: Public keys of the people whose signed approvals count for promotion.
    """

    keys: tuple[TrustedKey, ...] = ()
    ca_roots: tuple[Path, ...] = ()
    sigstore: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    approvers: tuple[TrustedKey, ...] = ()

    def describe(self) -> str:
        """A one-line summary for error messages."""
        parts = [f"keys {', '.join(k.name for k in self.keys)}"] if self.keys else []
        if self.ca_roots:
            parts.append(f"CA roots {', '.join(p.name for p in self.ca_roots)}")
        if self.sigstore:
            parts.append(f"Sigstore identities {', '.join(i for i, _ in self.sigstore)}")
        return "; ".join(parts) or "nothing"


def key_fingerprint(public_key_pem: bytes) -> str:
    """SHA-256 of a public key's DER encoding: how keys are named when nothing else is given."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def generate_key(private_path: Path, *, dev: bool = False, overwrite: bool = False) -> Path:
    """Generate an EC P-256 key pair: ``private_path`` (0600) and ``<stem>.pub``.

    Args:
        private_path: Where the private key goes.
        dev: Label it a development key (a ``.dev`` marker beside it).
        overwrite: Replace existing files (never done implicitly).

    Returns:
        The public key's path.

    Raises:
        ConfigurationError: When a key exists already and ``overwrite`` is not set.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_path = private_path.with_suffix(".pub")
    if private_path.exists() and not overwrite:
        raise ConfigurationError(f"{private_path} exists; refusing to replace a signing key")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    if dev:
        private_path.with_suffix(".dev").write_text(
            "development signing key generated by secure-pipeline: never trusted in production\n"
        )
    return public_path


def _is_dev(private_or_public: Path) -> bool:
    return private_or_public.with_suffix(".dev").exists()


def dev_key() -> Path:
    """The local development key, generated on first use."""
    path = env.secure_pipeline_home() / "keys" / f"{DEV_KEY_NAME}.pem"
    if not path.exists():
        generate_key(path, dev=True)
    return path


def signer_from_environment(environment: env.Environment | None = None) -> Signer:
    """The signer the environment configures.

    Locally, with nothing configured, the development key. In production a signer must be
    configured and must not be a development key.

    Raises:
        ConfigurationError: For a missing or contradictory configuration.
    """
    environment = environment or env.current_environment()
    mode = (env.read("SECURE_PIPELINE_SIGNING_MODE") or "").lower() or None
    if mode is None:
        if environment is env.Environment.PRODUCTION:
            raise ConfigurationError(
                "production needs a configured signer: set SECURE_PIPELINE_SIGNING_MODE "
                "(key, certificate or sigstore) and its variables"
            )
        key = dev_key()
        name = f"{DEV_LABEL}:{key_fingerprint(key.with_suffix('.pub').read_bytes())[:16]}"
        return Signer("key", private_key=key, dev=True, name=name)
    if mode not in ("key", "certificate", "sigstore"):
        raise ConfigurationError(
            f"SECURE_PIPELINE_SIGNING_MODE must be key, certificate or sigstore, found {mode!r}"
        )
    if mode == "sigstore":
        identity = env.read("SECURE_PIPELINE_SIGSTORE_IDENTITY") or "ambient OIDC identity"
        return Signer("sigstore", name=f"sigstore:{identity}")
    key_path = env.read("SECURE_PIPELINE_SIGNING_KEY")
    if key_path is None:
        raise ConfigurationError(f"signing mode {mode} needs SECURE_PIPELINE_SIGNING_KEY")
    private_key = Path(key_path)
    if not private_key.is_file():
        raise ConfigurationError(f"SECURE_PIPELINE_SIGNING_KEY {private_key} is not a file")
    dev = _is_dev(private_key)
    if dev and environment is env.Environment.PRODUCTION:
        raise ConfigurationError(
            f"{private_key} is a development key; production refuses to sign with it. "
            "Generate a production key (secure-pipeline keys generate) and keep it in a "
            "secret store."
        )
    password = env.read("SECURE_PIPELINE_SIGNING_KEY_PASSWORD")
    if mode == "key":
        from cryptography.hazmat.primitives import serialization

        loaded = serialization.load_pem_private_key(
            private_key.read_bytes(), password.encode() if password else None
        )
        public = loaded.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        label = DEV_LABEL if dev else "key"
        return Signer(
            "key", private_key, password, dev=dev, name=f"{label}:{key_fingerprint(public)[:16]}"
        )
    certificate = env.read("SECURE_PIPELINE_SIGNING_CERT")
    if certificate is None:
        raise ConfigurationError("signing mode certificate needs SECURE_PIPELINE_SIGNING_CERT")
    chain = tuple(
        Path(p) for p in (env.read("SECURE_PIPELINE_SIGNING_CHAIN") or "").split(",") if p.strip()
    )
    return Signer(
        "certificate",
        private_key,
        password,
        Path(certificate),
        chain,
        name=f"certificate:{_certificate_subject(Path(certificate))}",
    )


def _certificate_subject(path: Path) -> str:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()


def trust_policy_from_environment(environment: env.Environment | None = None) -> TrustPolicy:
    """The trust policy: ``SECURE_PIPELINE_TRUST_POLICY``, else (locally) the dev key.

    The file is JSON::

        {"keys": [{"name": "release", "public_key": "/etc/sp/release.pub"}],
         "ca_roots": ["/etc/sp/corp-root.pem"],
         "sigstore": [{"identity": "ci@example.com", "issuer": "https://accounts.example"}],
         "approvers": [{"name": "risk-officer", "public_key": "/etc/sp/risk-officer.pub"}]}

    Relative paths are relative to the policy file.

    Raises:
        ConfigurationError: When the policy is missing in production, malformed, trusts
            nothing, or (in production) trusts a development key.
    """
    environment = environment or env.current_environment()
    location = env.read("SECURE_PIPELINE_TRUST_POLICY")
    if location is None:
        if environment is env.Environment.PRODUCTION:
            raise ConfigurationError(
                "production needs SECURE_PIPELINE_TRUST_POLICY: the keys, CA roots or "
                "Sigstore identities whose signatures are accepted"
            )
        public = dev_key().with_suffix(".pub")
        return TrustPolicy(keys=(TrustedKey(f"{DEV_LABEL} key", public, dev=True),), approvers=())
    path = Path(location)
    try:
        document = json.loads(path.read_text())
        base = path.parent
        keys = tuple(
            TrustedKey(
                str(k.get("name") or k["public_key"]),
                (base / k["public_key"]).resolve(),
                dev=bool(k.get("dev")) or _is_dev(base / k["public_key"]),
            )
            for k in document.get("keys", [])
        )
        roots = tuple((base / r).resolve() for r in document.get("ca_roots", []))
        sigstore = tuple((s["identity"], s["issuer"]) for s in document.get("sigstore", []))
        approvers = tuple(
            TrustedKey(str(a["name"]), (base / a["public_key"]).resolve())
            for a in document.get("approvers", [])
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"trust policy {path} is not valid: {exc}") from None
    policy = TrustPolicy(keys, roots, sigstore, approvers)
    if not (keys or roots or sigstore):
        raise ConfigurationError(f"trust policy {path} trusts no signer")
    if environment is env.Environment.PRODUCTION and any(k.dev for k in keys):
        raise ConfigurationError(f"trust policy {path} trusts a development key in production")
    return policy


def _hashing_config() -> object:
    from model_signing import hashing

    # One SHA-256 per file, computed in parallel; the signature file itself is not signed.
    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", max_workers=os.cpu_count())
        # Every other file is signed, .git* included: nothing in a bundle goes unverified.
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    )


def sign_bundle(directory: Path, signer: Signer) -> Path:
    """Sign every file of ``directory`` into ``directory/model.sig``.

    Raises:
        SignatureError: When signing fails.
    """
    from model_signing import signing

    config = signing.Config().set_hashing_config(_hashing_config())
    if signer.mode == "key":
        config = config.use_elliptic_key_signer(
            private_key=signer.private_key, password=signer.password
        )
    elif signer.mode == "certificate":
        config = config.use_certificate_signer(
            private_key=signer.private_key,
            signing_certificate=signer.certificate,
            certificate_chain=list(signer.chain),
        )
    else:
        config = config.use_sigstore_signer()
    target = directory / SIGNATURE_FILE
    try:
        config.sign(directory, target)
    except (ValueError, OSError) as exc:
        raise SignatureError(f"signing {directory} failed: {exc}") from exc
    return target


def verify_bundle(directory: Path, policy: TrustPolicy) -> str:
    """Verify the signature of a bundle directory against the trust policy.

    Every file is re-hashed; the signature must come from a signer the policy trusts.

    Args:
        directory: The bundle.
        policy: Who may sign.

    Returns:
        The name of the trusted signer that signed it.

    Raises:
        SignatureError: Naming what failed: no signature, an untrusted signer, or which files
            changed, appeared or disappeared.
    """
    from model_signing import verifying

    signature = directory / SIGNATURE_FILE
    if not signature.is_file():
        raise SignatureError(f"{directory} has no {SIGNATURE_FILE}: the bundle is not signed")
    attempts: list[str] = []
    candidates: list[tuple[str, object]] = [
        (key.name, verifying.Config().use_elliptic_key_verifier(public_key=key.public_key))
        for key in policy.keys
    ]
    if policy.ca_roots:
        candidates.append(
            (
                "enterprise CA",
                verifying.Config().use_certificate_verifier(
                    certificate_chain=list(policy.ca_roots)
                ),
            )
        )
    for identity, issuer in policy.sigstore:
        candidates.append(
            (
                f"sigstore:{identity}",
                verifying.Config().use_sigstore_verifier(identity=identity, oidc_issuer=issuer),
            )
        )
    for name, config in candidates:
        try:
            config.set_hashing_config(_hashing_config()).verify(directory, signature)  # type: ignore[attr-defined]
        except ValueError as exc:
            text = str(exc)
            if text.startswith("Signature mismatch"):
                raise SignatureError(
                    f"bundle {directory} does not match its signature (signer {name}): "
                    f"{text.split(':', 1)[1].strip()}. A file was changed, added, removed or "
                    "renamed after signing; do not use this bundle."
                ) from None
            attempts.append(f"{name}: {text.strip()}")
            continue
        except Exception as exc:  # noqa: BLE001 - each verifier has its own error types
            attempts.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        return name
    raise SignatureError(
        f"bundle {directory} is not signed by a trusted signer (trusted: {policy.describe()}). "
        + ("Attempts: " + " | ".join(attempts) if attempts else "")
    )
