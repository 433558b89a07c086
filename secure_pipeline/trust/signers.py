"""The signer of each identity, from the environment, checked against the trust policy.

``SECURE_PIPELINE_SIGNER_<IDENTITY>`` (``..._INGEST``, ``_TRAIN``, ``_RELEASE``, ``_GATE``,
``_MONITOR``) holds a securesystemslib private key URI: ``file2:/run/secrets/ingest.pem`` (or a
plain path), ``awskms:<key id or alias>``, ``gcpkms:...``, ``hsm:...`` — so a production key can
live in KMS and never in a pod. The release identity falls back to the model signing key
(``SECURE_PIPELINE_SIGNING_KEY``) in key and certificate modes. Locally, with nothing set, each
identity signs with its development key.

A signer is accepted only if its public key is one the trust policy gives to that identity
(checked with a probe signature for remote keys), and in production only if it is not a
development key.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_pipeline import environment as env
from secure_pipeline.errors import ConfigurationError, SignatureError
from secure_pipeline.trust import keys as keyfiles
from secure_pipeline.trust.identities import (
    APPROVER_PREFIX,
    RELEASE,
    STAGE_IDENTITIES,
    signer_variable,
)
from secure_pipeline.trust.policy import PublicKey, TrustPolicy, ensure_dev_identities, trust_policy


@dataclass(frozen=True)
class IdentitySigner:
    """A signer speaking for one identity of the trust policy.

    Attributes:
        identity: The identity (``ingest``... or ``approver:<name>``).
        keyid: Its key's fingerprint.
        signer: The securesystemslib signer.
        policy_digest: Digest of the trust policy it was checked against.
    """

    identity: str
    keyid: str
    signer: Any
    policy_digest: str

    def sign(self, payload: bytes) -> str:
        """Sign ``payload``; returns the signature as hex."""
        return str(self.signer.sign(payload).signature)


_CACHE: dict[tuple[Any, ...], IdentitySigner] = {}


def signer_for(identity: str, environment: env.Environment | None = None) -> IdentitySigner:
    """The signer of a stage identity, as the environment configures it.

    Raises:
        ConfigurationError: When no key is configured (production), the key is a development
            key (production), or the trust policy does not give it to this identity.
    """
    if identity not in STAGE_IDENTITIES:
        raise ValueError(f"unknown identity {identity!r}")
    environment = environment or env.current_environment()
    production = environment is env.Environment.PRODUCTION
    policy = trust_policy(environment)
    variable = signer_variable(identity)
    uri = env.read(variable)
    password = None
    if (
        uri is None
        and identity == RELEASE
        and env.read("SECURE_PIPELINE_SIGNING_MODE")
        in (
            "key",
            "certificate",
        )
    ):
        key_path = env.read("SECURE_PIPELINE_SIGNING_KEY")
        if key_path:
            uri, password = f"file2:{key_path}", env.read("SECURE_PIPELINE_SIGNING_KEY_PASSWORD")
    if uri is None:
        if production:
            raise ConfigurationError(
                f"production needs {variable}: the private key URI of the {identity} identity "
                "(file2:/path/key.pem, awskms:<key>, gcpkms:..., hsm:...), whose public key the "
                "trust policy names"
            )
        uri = f"file2:{ensure_dev_identities() / f'{identity}.pem'}"
    cache_key = (identity, uri, policy.digest, production)
    if cache_key not in _CACHE:
        _CACHE[cache_key] = _load(identity, uri, password, policy, production, variable)
    return _CACHE[cache_key]


def approver_signer(private_key: Path, policy: TrustPolicy | None = None) -> IdentitySigner:
    """The signer of an approver's key file; refuses a key the policy lists as no approver.

    Raises:
        ConfigurationError: When the key is not an approver's of the trust policy, or is a
            development key in production.
    """
    policy = policy or trust_policy()
    production = env.current_environment() is env.Environment.PRODUCTION
    data = _read_private(private_key)
    public = PublicKey.from_pem(keyfiles.public_pem_of(data))
    name = policy.approver_of(public.keyid)
    if name is None:
        raise ConfigurationError(
            f"key {private_key} (fingerprint {public.keyid[:16]}) is not an approver of the "
            f"{policy.describe()}; nothing was written. Ask the policy owner to add its public "
            "key to the policy's approvers."
        )
    if production and keyfiles.is_dev_key(data):
        raise ConfigurationError(f"{private_key} is a development key; production refuses it")
    return IdentitySigner(
        f"{APPROVER_PREFIX}{name}", public.keyid, _crypto_signer(data, None, public), policy.digest
    )


def _read_private(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read private key {path}: {exc}") from None


def _crypto_signer(data: bytes, password: str | None, public: PublicKey) -> Any:
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import CryptoSigner

    private = serialization.load_pem_private_key(data, password.encode() if password else None)
    return CryptoSigner(private, public.sslib())


def _load(
    identity: str,
    uri: str,
    password: str | None,
    policy: TrustPolicy,
    production: bool,
    variable: str,
) -> IdentitySigner:
    candidates = policy.keys_for(identity)
    if not candidates:
        raise ConfigurationError(
            f"the {policy.describe()} names no key for the {identity} identity; add its public "
            "key to the policy (secure-pipeline trust init) and sign the policy again"
        )
    scheme, _, rest = uri.partition(":")
    if scheme not in ("file2", "awskms", "gcpkms", "azurekms", "hsm", "hv", "sigstore"):
        scheme, rest = "file2", uri  # a plain path
    if scheme == "file2":
        path = Path(rest)
        data = _read_private(path)
        try:
            public = PublicKey.from_pem(keyfiles.public_pem_of(data, password))
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{variable}: {path} is not a PEM private key ({exc})"
            ) from None
        if production and keyfiles.is_dev_key(data):
            raise ConfigurationError(
                f"{variable}: {path} is a development key (its fingerprint {public.keyid[:16]} "
                "is in the development key ledger); production refuses it under any name. "
                "Generate a production key (secure-pipeline keys generate) or use a KMS key."
            )
        if public.keyid not in {k.keyid for k in candidates}:
            raise ConfigurationError(
                f"{variable}: key {public.keyid[:16]} is not one the trust policy gives to the "
                f"{identity} identity ({', '.join(k.keyid[:16] for k in candidates)})"
            )
        return IdentitySigner(
            identity, public.keyid, _crypto_signer(data, password, public), policy.digest
        )
    return _remote(identity, uri, candidates, policy, variable)


def _remote(
    identity: str,
    uri: str,
    candidates: tuple[PublicKey, ...],
    policy: TrustPolicy,
    variable: str,
) -> IdentitySigner:
    """A KMS/HSM signer: which policy key it holds is learnt from a probe signature."""
    from securesystemslib.signer import Signer

    probe = b"secure-pipeline signer probe"
    errors: list[str] = []
    for key in candidates:
        sslib = key.sslib()
        try:
            signer = Signer.from_priv_key_uri(uri, sslib)
            sslib.verify_signature(signer.sign(probe), probe)
        except Exception as exc:  # noqa: BLE001 - each KMS client raises its own types
            errors.append(f"{key.keyid[:16]}: {type(exc).__name__}")
            continue
        return IdentitySigner(identity, key.keyid, signer, policy.digest)
    raise SignatureError(
        f"{variable}: the key behind {uri.split(':', 1)[0]}:… does not sign as any key the trust "
        f"policy gives to {identity} ({'; '.join(errors)}); check the key id and the policy"
    )


def verifier(policy: TrustPolicy) -> Callable[..., str | None]:
    """A function ``(keyid, signature hex, payload, seq) -> identity or None`` for audit records.

    Retired keys count here (and only here), up to the record their retirement names: a record
    signed before a key was rotated out is still the record it was; one signed after is not.
    """
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
    from securesystemslib.signer import Signature

    keys: dict[str, Any] = {}

    def verify(keyid: str, signature: str, payload: bytes, seq: int | None = None) -> str | None:
        identity = policy.identity_of(keyid, retired=True)
        key = policy.key(keyid, retired=True)
        if identity is None or key is None:
            return None
        if policy.is_retired(keyid):
            limit = policy.retired_limit(keyid)
            if limit is not None and (seq is None or seq > limit):
                return None
        if keyid not in keys:
            keys[keyid] = key.sslib()
        try:
            keys[keyid].verify_signature(Signature(keyid, signature), payload)
        except (UnverifiedSignatureError, VerificationError, ValueError):
            return None
        return identity

    return verify
