"""Signing model bundles with OpenSSF model_signing, verified against the trust policy.

A bundle is a directory; model_signing hashes every file in it (SHA-256, one digest per file)
into a manifest, signs the manifest and writes a Sigstore bundle, ``model.sig``, beside the
files. Verification re-hashes the directory: a changed byte, an added, removed or renamed file
fails it. The same bundle verifies with the upstream ``model_signing`` command line.

The bundle is signed by the ``release`` identity. Signing modes:

* ``key`` — an EC private key (P-256). The air-gapped default. Locally, with nothing
  configured, the release identity's development key (kept outside ``SECURE_PIPELINE_HOME``;
  see `secure_pipeline.trust.keys`); production refuses any development key.
* ``certificate`` — a key plus its certificate and chain from an enterprise CA.
* ``sigstore`` — keyless signing with an OIDC identity (Fulcio certificate, Rekor log). It
  needs the public Sigstore services, so it cannot run offline.

What verifies is what the trust policy gives the release identity: its public keys, CA roots,
or Sigstore identity + issuer. A signature from anything else is refused.
"""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SignatureError
from secure_pipeline.trust import keys as keyfiles
from secure_pipeline.trust.identities import RELEASE
from secure_pipeline.trust.policy import TrustPolicy, ensure_dev_identities

SIGNATURE_FILE = "model.sig"
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
        dev: Whether this is a development key.
        name: How the signer is named in tags and audit records (never a secret).
    """

    mode: Mode
    private_key: Path | None = None
    password: str | None = None
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    dev: bool = False
    name: str = ""


def signer_from_environment(environment: env.Environment | None = None) -> Signer:
    """The model bundle signer the environment configures.

    Locally, with nothing configured, the release identity's development key. In production a
    signer must be configured and must not be a development key (recognised by its fingerprint
    in the development key ledger, or its label, whatever the file is called).

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
        key = ensure_dev_identities() / f"{RELEASE}.pem"
        name = f"{DEV_LABEL}:{keyfiles.fingerprint(key.with_suffix('.pub').read_bytes())[:16]}"
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
    password = env.read("SECURE_PIPELINE_SIGNING_KEY_PASSWORD")
    data = private_key.read_bytes()
    dev = keyfiles.is_dev_key(data)
    if dev and environment is env.Environment.PRODUCTION:
        raise ConfigurationError(
            f"{private_key} is a development key (its fingerprint is in the development key "
            "ledger); production refuses to sign with it, whatever the file is called. Generate "
            "a production key (secure-pipeline keys generate) and keep it in a secret store."
        )
    if mode == "key":
        try:
            public = keyfiles.public_pem_of(data, password)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"{private_key} is not a PEM private key ({exc})") from None
        label = DEV_LABEL if dev else "key"
        return Signer(
            "key", private_key, password, dev=dev,
            name=f"{label}:{keyfiles.fingerprint(public)[:16]}",
        )  # fmt: skip
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


def signed_digests(directory: Path) -> dict[str, str] | None:
    """The per-file SHA-256 digests the bundle's signature covers, from its signed manifest.

    Only meaningful once `verify_bundle` passed: then these are the files' digests as
    model_signing re-hashed and compared them, so nothing needs hashing a second time. None
    when the manifest is not in the OpenSSF model signing v1.0 format read here.
    """
    import base64

    try:
        document = json.loads((directory / SIGNATURE_FILE).read_bytes())
        statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
        if statement.get("predicateType") != "https://model_signing/signature/v1.0":
            return None
        resources = statement["predicate"]["resources"]
        if any(r.get("algorithm") != "sha256" for r in resources):
            return None
        return {str(r["name"]): str(r["digest"]) for r in resources}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_bundle(directory: Path, policy: TrustPolicy) -> str:
    """Verify the signature of a bundle directory against the release identity of the policy.

    Every file is re-hashed; the signature must come from a key, CA root or Sigstore identity
    the trust policy gives to ``release``.

    Args:
        directory: The bundle.
        policy: The trust policy.

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
    release = policy.identities.get(RELEASE)
    if release is None or not (release.keys or release.ca_roots or release.sigstore):
        raise SignatureError(f"the {policy.describe()} names no release signer")
    attempts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="trust-") as temporary:
        # model_signing reads keys and roots from files: written from the verified policy, not
        # taken from files an insider could swap.
        candidates: list[tuple[str, object]] = []
        for key in release.keys:
            path = Path(temporary) / f"{key.keyid}.pub"
            path.write_text(key.pem)
            candidates.append(
                (
                    f"release key {key.keyid[:16]}",
                    verifying.Config().use_elliptic_key_verifier(public_key=path),
                )
            )
        if release.ca_roots:
            roots = []
            for index, pem in enumerate(release.ca_roots):
                roots.append(Path(temporary) / f"root-{index}.pem")
                roots[-1].write_text(pem)
            candidates.append(
                (
                    "release CA",
                    verifying.Config().use_certificate_verifier(certificate_chain=roots),
                )
            )
        for identity, issuer in release.sigstore:
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
                        f"{text.split(':', 1)[1].strip()}. A file was changed, added, removed "
                        "or renamed after signing; do not use this bundle."
                    ) from None
                attempts.append(f"{name}: {text.strip()[:200]}")
                continue
            except Exception as exc:  # noqa: BLE001 - each verifier has its own error types
                attempts.append(f"{name}: {type(exc).__name__}")
                continue
            return name
    raise SignatureError(
        f"bundle {directory} is not signed by a trusted signer (the release identity of the "
        f"{policy.describe()}). " + ("Attempts: " + " | ".join(attempts) if attempts else "")
    )
