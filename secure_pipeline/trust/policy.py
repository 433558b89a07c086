"""The trust policy: which keys speak for each identity, who approves, which checks a model needs.

The policy is one JSON document (public keys inline, so swapping a key file beside it changes
nothing)::

    {"_type": "https://secure-pipeline.dev/trust-policy/v1",
     "identities": {
       "ingest":  {"keys": [{"keyid": "<fingerprint>", "public_key": "-----BEGIN PUBLIC KEY-..."}]},
       "train":   {"keys": [...]},
       "release": {"keys": [...], "ca_roots": ["<PEM>"], "sigstore": [{"identity": "...",
                   "issuer": "..."}]},
       "gate":    {"keys": [...]},
       "monitor": {"keys": [...]}},
     "approvers": [{"name": "risk-officer", "keyid": "...", "public_key": "<PEM>"}],
     "required_checks": ["...optional: checks a model needs beyond the library's..."]}

Rotating a key: move it from ``keys`` to the identity's ``retired_keys`` (an approver who
leaves: ``"retired": true``), with ``"last_record"``: the audit trail's record count at the
rotation. A retired key still verifies the audit records it signed up to that record, so the
trail stays verifiable; a record it signs after that, and anything else it signs, counts for
nothing, and no signer may use it. (A key that was stolen is removed, not retired.)

Whoever can write the file could trust their own key, so the policy is established one of two
ways, and production accepts nothing else:

* **signed**: the file is a DSSE envelope of the document, signed by a root key kept offline
  (``secure-pipeline trust sign``), and the root key's fingerprint is pinned in the deployment
  (``SECURE_PIPELINE_TRUST_ROOT``);
* **pinned**: the document's digest is pinned in the deployment
  (``SECURE_PIPELINE_TRUST_POLICY_SHA256``; ``secure-pipeline trust show`` prints it).

Locally, with nothing configured, a development policy is generated beside the development
keys (outside ``SECURE_PIPELINE_HOME``) and signed by a development root. Production refuses a
development policy, and any key whose fingerprint the development key ledger holds.
"""

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from secure_pipeline import environment as env
from secure_pipeline.canonical import canonical_json, sha256_hex
from secure_pipeline.errors import ConfigurationError, SignatureError
from secure_pipeline.trust import keys as keyfiles
from secure_pipeline.trust.identities import (
    APPROVER_PREFIX,
    STAGE_IDENTITIES,
    approver_identity,
)

POLICY_TYPE = "https://secure-pipeline.dev/trust-policy/v1"
POLICY_PAYLOAD_TYPE = "application/vnd.secure-pipeline.trust-policy+json"
DEV_POLICY_FILE = "trust-policy.json"
DEV_ROOT = "root"
_SSLIB_KEYS: dict[tuple[str, str], Any] = {}
_APPROVER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class PublicKey:
    """A public key of the policy.

    Attributes:
        keyid: Its fingerprint (SHA-256 of the DER public key).
        pem: The PEM public key.
    """

    keyid: str
    pem: str

    def sslib(self) -> Any:
        """The key as a securesystemslib ``SSlibKey`` (verifies DSSE signatures).

        Built once per key: parsing the PEM costs as much as a signature check, and verifying
        a champion checks a dozen signatures by the same few keys.
        """
        cached = _SSLIB_KEYS.get((self.keyid, self.pem))
        if cached is None:
            from cryptography.hazmat.primitives import serialization
            from securesystemslib.signer import SSlibKey

            loaded = serialization.load_pem_public_key(self.pem.encode())
            plain = SSlibKey.from_crypto(loaded, keyid=self.keyid)
            cached = _loaded_key_class()(plain.keyid, plain.keytype, plain.scheme, plain.keyval)
            cached.loaded = loaded
            _SSLIB_KEYS[(self.keyid, self.pem)] = cached
        return cached

    @classmethod
    def from_pem(cls, pem: bytes | str) -> "PublicKey":
        """Wrap a PEM public key (a development label before it is dropped)."""
        text = pem.decode() if isinstance(pem, bytes) else pem
        start = text.find("-----BEGIN PUBLIC KEY-----")
        if start < 0:
            raise ValueError("not a PEM public key")
        text = text[start:]
        return cls(keyfiles.fingerprint(text), text)


def _loaded_key_class() -> type:
    """An ``SSlibKey`` that keeps its parsed public key.

    securesystemslib re-parses the PEM on every verification; the verification itself stays
    securesystemslib's.
    """
    global _LOADED_KEY
    if _LOADED_KEY is None:
        from securesystemslib.signer import SSlibKey

        class LoadedKey(SSlibKey):
            loaded: Any = None

            def _crypto_key(self) -> Any:
                return self.loaded if self.loaded is not None else super()._crypto_key()

        _LOADED_KEY = LoadedKey
    return _LOADED_KEY


_LOADED_KEY: type | None = None


@dataclass(frozen=True)
class Identity:
    """The keys (and, for ``release``, certificate roots or Sigstore identities) of a role.

    Attributes:
        name: The identity (``ingest``, ``train``, ``release``, ``gate``, ``monitor``).
        keys: Its public keys.
        retired_keys: Keys it no longer signs with; they verify only audit records.
        retired_until: Retired key id -> the last audit record it may have signed.
        ca_roots: PEM CA certificates accepted for model bundles signed in certificate mode.
        sigstore: ``(identity, issuer)`` pairs accepted for keyless model bundle signatures.
    """

    name: str
    keys: tuple[PublicKey, ...] = ()
    retired_keys: tuple[PublicKey, ...] = ()
    retired_until: Mapping[str, int] = field(default_factory=dict)
    ca_roots: tuple[str, ...] = ()
    sigstore: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TrustPolicy:
    """A verified trust policy.

    Attributes:
        identities: Each stage identity's keys.
        approvers: Approver name -> public key.
        retired_approvers: Approvers who left: their keys verify only audit records.
        retired_until: Retired approver key id -> the last audit record it may have signed.
        required_checks: Checks every model needs a passing signed verdict of, beyond the
            library's own list.
        digest: SHA-256 of the canonical document: recorded in every attestation.
        source: Where it was read from.
        established: How it was established (signed by a pinned root, pinned by digest...).
        dev: Whether it is a development policy (refused in production).
    """

    identities: Mapping[str, Identity]
    approvers: Mapping[str, PublicKey] = field(default_factory=dict)
    retired_approvers: Mapping[str, PublicKey] = field(default_factory=dict)
    retired_until: Mapping[str, int] = field(default_factory=dict)
    required_checks: tuple[str, ...] = ()
    digest: str = ""
    source: str = ""
    established: str = ""
    dev: bool = False

    def keys_for(self, identity: str) -> tuple[PublicKey, ...]:
        """The keys that may sign as ``identity`` (``approver:<name>`` for approvers)."""
        if identity.startswith(APPROVER_PREFIX):
            key = self.approvers.get(identity[len(APPROVER_PREFIX) :])
            return (key,) if key else ()
        found = self.identities.get(identity)
        return found.keys if found else ()

    def identity_of(self, keyid: str, *, retired: bool = False) -> str | None:
        """The identity a key id speaks for, or None when the policy does not know it.

        Args:
            keyid: The key's fingerprint.
            retired: Also look at retired keys (for records signed before a rotation).
        """
        for identity in self.identities.values():
            if any(k.keyid == keyid for k in identity.keys):
                return identity.name
            if retired and any(k.keyid == keyid for k in identity.retired_keys):
                return identity.name
        approvers = {**self.approvers, **(self.retired_approvers if retired else {})}
        for name, key in approvers.items():
            if key.keyid == keyid:
                return approver_identity(name)
        return None

    def retired_limit(self, keyid: str) -> int | None:
        """For a retired key: the last audit record it may have signed (None: no limit set)."""
        for identity in self.identities.values():
            if keyid in identity.retired_until:
                return identity.retired_until[keyid]
        return self.retired_until.get(keyid)

    def is_retired(self, keyid: str) -> bool:
        """Whether a key id is one of the policy's retired keys."""
        if any(k.keyid == keyid for i in self.identities.values() for k in i.retired_keys):
            return True
        return any(k.keyid == keyid for k in self.retired_approvers.values())

    def key(self, keyid: str, *, retired: bool = False) -> PublicKey | None:
        """The public key with this key id, if the policy knows it."""
        for identity in self.identities.values():
            for key in (*identity.keys, *(identity.retired_keys if retired else ())):
                if key.keyid == keyid:
                    return key
        approvers = {**self.approvers, **(self.retired_approvers if retired else {})}
        return next((k for k in approvers.values() if k.keyid == keyid), None)

    def approver_of(self, keyid: str) -> str | None:
        """The approver name of a key id, or None."""
        return next((n for n, k in self.approvers.items() if k.keyid == keyid), None)

    def describe(self) -> str:
        """A short summary for reports and error messages."""
        parts = [
            f"{name}: {', '.join(k.keyid[:12] for k in identity.keys) or 'no keys'}"
            for name, identity in self.identities.items()
        ]
        if self.approvers:
            parts.append(f"approvers: {', '.join(sorted(self.approvers))}")
        return f"trust policy {self.digest[:12]} ({self.established}; " + "; ".join(parts) + ")"


# -- documents ---------------------------------------------------------------------------------


def _key_entry(pem: bytes | str) -> dict[str, str]:
    key = PublicKey.from_pem(pem)
    return {"keyid": key.keyid, "public_key": key.pem}


def policy_document(
    identities: Mapping[str, Sequence[bytes | str]],
    *,
    approvers: Mapping[str, bytes | str] | None = None,
    release_ca_roots: Sequence[bytes | str] = (),
    release_sigstore: Sequence[tuple[str, str]] = (),
    required_checks: Sequence[str] = (),
    dev: bool = False,
) -> dict[str, Any]:
    """Build a policy document from PEM public keys.

    Args:
        identities: Identity -> the PEM public keys that may sign as it.
        approvers: Approver name -> PEM public key.
        release_ca_roots: PEM CA certificates for certificate-mode model signatures.
        release_sigstore: ``(identity, issuer)`` pairs for keyless model signatures.
        required_checks: Checks a model needs beyond the library's own.
        dev: Mark it a development policy.

    Returns:
        The document (validate it with `parse_document`).
    """
    document: dict[str, Any] = {
        "_type": POLICY_TYPE,
        "identities": {
            name: {"keys": [_key_entry(pem) for pem in pems]} for name, pems in identities.items()
        },
        "approvers": [
            {"name": name, **_key_entry(pem)} for name, pem in sorted((approvers or {}).items())
        ],
    }
    release = document["identities"].setdefault("release", {"keys": []})
    if release_ca_roots:
        release["ca_roots"] = [r.decode() if isinstance(r, bytes) else r for r in release_ca_roots]
    if release_sigstore:
        release["sigstore"] = [{"identity": i, "issuer": s} for i, s in release_sigstore]
    if required_checks:
        document["required_checks"] = list(required_checks)
    if dev:
        document["dev"] = True
    return document


def parse_document(document: Any, *, source: str = "") -> TrustPolicy:
    """Validate a policy document; every problem is listed in one error.

    Raises:
        ConfigurationError: When it is not a valid policy: unknown identities, a key id that
            does not match its key, one key serving two roles, no identity at all...
    """
    where = f"trust policy {source}" if source else "trust policy"
    if not isinstance(document, Mapping):
        raise ConfigurationError(f"{where} is not a JSON object")
    problems: list[str] = []
    if document.get("_type") != POLICY_TYPE:
        problems.append(f"_type must be {POLICY_TYPE!r}, found {document.get('_type')!r}")
    unknown = set(document) - {"_type", "identities", "approvers", "required_checks", "dev"}
    if unknown:
        problems.append(f"unknown fields {sorted(unknown)}")
    identities: dict[str, Identity] = {}
    raw = document.get("identities")
    if not isinstance(raw, Mapping) or not raw:
        problems.append("identities must name at least one identity and its keys")
        raw = {}
    owner: dict[str, str] = {}
    for name, entry in raw.items():
        if name not in STAGE_IDENTITIES:
            problems.append(f"unknown identity {name!r} (known: {', '.join(STAGE_IDENTITIES)})")
            continue
        if not isinstance(entry, Mapping):
            problems.append(f"identity {name!r} must be an object with keys")
            continue
        keys = _parse_keys(entry.get("keys", []), f"identity {name}", problems)
        retired = _parse_keys(entry.get("retired_keys", []), f"identity {name}", problems)
        until = _limits(entry.get("retired_keys", []), f"identity {name}", problems)
        for key in (*keys, *retired):
            if key.keyid in owner and owner[key.keyid] != name:
                problems.append(
                    f"key {key.keyid[:16]} is given to both {owner[key.keyid]} and {name}: each "
                    "identity needs its own key, or one stage could sign for another"
                )
            owner[key.keyid] = name
        roots = tuple(str(r) for r in entry.get("ca_roots", []))
        sigstore = tuple(
            (str(s.get("identity")), str(s.get("issuer")))
            for s in entry.get("sigstore", [])
            if isinstance(s, Mapping)
        )
        if (roots or sigstore) and name != "release":
            problems.append(f"identity {name!r}: ca_roots and sigstore apply to release only")
        identities[name] = Identity(name, keys, retired, until, roots, sigstore)
    approvers: dict[str, PublicKey] = {}
    retired_approvers: dict[str, PublicKey] = {}
    approver_limits = _limits(
        [a for a in document.get("approvers", []) or [] if isinstance(a, Mapping)
         and a.get("retired")], "approvers", problems,
    )  # fmt: skip
    for entry in document.get("approvers", []) or []:
        name = str(entry.get("name", "")) if isinstance(entry, Mapping) else ""
        if not _APPROVER_NAME.match(name):
            problems.append(f"approver name {name!r} must be lower-case letters, digits, . _ -")
            continue
        parsed = _parse_keys([entry], f"approver {name}", problems)
        if not parsed:
            continue
        if name in approvers or name in retired_approvers:
            problems.append(f"approver {name!r} is listed twice")
        if parsed[0].keyid in owner:
            problems.append(
                f"approver {name!r} uses the key of {owner[parsed[0].keyid]}: an approval must "
                "come from a person's own key, not a pipeline stage's"
            )
        owner[parsed[0].keyid] = approver_identity(name)
        (retired_approvers if entry.get("retired") else approvers)[name] = parsed[0]
    required = document.get("required_checks", [])
    if not isinstance(required, list) or not all(isinstance(c, str) for c in required):
        problems.append("required_checks must be a list of check names")
        required = []
    if problems:
        raise ConfigurationError(
            f"{where} is not valid:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return TrustPolicy(
        identities=identities,
        approvers=approvers,
        retired_approvers=retired_approvers,
        retired_until=approver_limits,
        required_checks=tuple(required),
        digest=sha256_hex(canonical_json(document)),
        source=source,
        dev=bool(document.get("dev")),
    )


def _limits(entries: Any, where: str, problems: list[str]) -> dict[str, int]:
    """``last_record`` of retired key entries, by key id."""
    found: dict[str, int] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or "last_record" not in entry:
            continue
        limit = entry["last_record"]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            problems.append(f"{where}: last_record must be a record count, found {limit!r}")
            continue
        found[str(entry.get("keyid"))] = limit
    return found


def _parse_keys(entries: Any, where: str, problems: list[str]) -> tuple[PublicKey, ...]:
    keys = []
    if not isinstance(entries, list):
        problems.append(f"{where}: keys must be a list")
        return ()
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("public_key"), str):
            problems.append(f"{where}: each key needs a keyid and an inline PEM public_key")
            continue
        try:
            key = PublicKey.from_pem(entry["public_key"])
        except (ValueError, TypeError) as exc:
            problems.append(f"{where}: public_key is not a PEM public key ({exc})")
            continue
        if entry.get("keyid") != key.keyid:
            problems.append(
                f"{where}: keyid {str(entry.get('keyid'))[:16]} is not the fingerprint of its "
                f"key ({key.keyid[:16]})"
            )
            continue
        keys.append(key)
    return tuple(keys)


# -- signing and establishing --------------------------------------------------------------------


def sign_policy(document: Mapping[str, Any], root_private_key: Path) -> bytes:
    """Sign a policy document with a root key into a DSSE envelope (the signed policy file).

    The envelope carries the root public key beside the signature; what makes it trusted is
    the root's fingerprint pinned in the deployment, never the key in the file.

    Raises:
        ConfigurationError: When the document is not a valid policy.
    """
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    parse_document(document)
    private = serialization.load_pem_private_key(root_private_key.read_bytes(), None)
    root = PublicKey.from_pem(keyfiles.public_pem_of(root_private_key.read_bytes()))
    signer = CryptoSigner(private, root.sslib())
    envelope = Envelope(canonical_json(document), POLICY_PAYLOAD_TYPE, {})
    envelope.sign(signer)
    signed = envelope.to_dict()
    signed["root_keys"] = [{"keyid": root.keyid, "public_key": root.pem}]
    return json.dumps(signed, indent=2, sort_keys=True).encode() + b"\n"


def load_policy(
    data: bytes,
    *,
    source: str,
    pinned_roots: Iterable[str] = (),
    pinned_digest: str | None = None,
    production: bool = False,
) -> TrustPolicy:
    """Establish a trust policy from a file's bytes.

    Args:
        data: A signed policy (DSSE envelope) or a plain policy document.
        source: Where it came from, for messages.
        pinned_roots: Fingerprints of the root keys that may sign it.
        pinned_digest: The document digest it must have.
        production: Apply production's rules: signed by a pinned root or pinned by digest, no
            development policy, no development key.

    Raises:
        SignatureError: When the signature does not verify, the root is not pinned, or the
            digest differs from the pin.
        ConfigurationError: When the document is malformed, or production's rules refuse it.
    """
    roots = {r.removeprefix("sha256:").strip().lower() for r in pinned_roots if r.strip()}
    try:
        outer = json.loads(data)
    except ValueError as exc:
        raise ConfigurationError(f"trust policy {source} is not JSON: {exc}") from None
    signed_by: str | None = None
    if isinstance(outer, Mapping) and "payloadType" in outer:
        document, signed_by = _open_signed(outer, source, roots)
    else:
        document = outer
    policy = parse_document(document, source=source)
    how: list[str] = []
    if signed_by:
        how.append(f"signed by root {signed_by[:16]}" + ("" if roots else " (root not pinned)"))
    if pinned_digest:
        if policy.digest != pinned_digest.removeprefix("sha256:").strip().lower():
            raise SignatureError(
                f"trust policy {source} has digest {policy.digest}, but the deployment pins "
                f"{pinned_digest}: the policy was changed. Restore the reviewed policy or pin "
                "the new one (secure-pipeline trust show prints its digest)."
            )
        how.append("pinned by digest")
    if production:
        problems = []
        if not (pinned_digest or (signed_by and roots)):
            problems.append(
                "production accepts only a trust policy signed by a root whose fingerprint is "
                "pinned in SECURE_PIPELINE_TRUST_ROOT, or one whose digest is pinned in "
                "SECURE_PIPELINE_TRUST_POLICY_SHA256"
                + (
                    "; this one is signed but its root is not pinned"
                    if signed_by
                    else "; this one is not signed"
                )
            )
        if policy.dev:
            problems.append("it is a development policy")
        dev_keys = keyfiles.dev_fingerprints()
        ledgered = sorted(
            f"{identity} {key.keyid[:16]}"
            for identity, key in _all_keys(policy)
            if key.keyid in dev_keys
        )
        if signed_by and signed_by in dev_keys:
            ledgered.append(f"root {signed_by[:16]}")
        if ledgered:
            problems.append(
                "it trusts development keys (their fingerprints are in the development key "
                f"ledger): {', '.join(ledgered)}"
            )
        if problems:
            raise ConfigurationError(
                f"trust policy {source} is refused in production:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
    established = ", ".join(how) or "unsigned and unpinned (accepted locally only)"
    return replace(policy, established=established)


def _all_keys(policy: TrustPolicy) -> Iterable[tuple[str, PublicKey]]:
    for identity in policy.identities.values():
        for key in (*identity.keys, *identity.retired_keys):
            yield identity.name, key
    for name, key in (*policy.approvers.items(), *policy.retired_approvers.items()):
        yield approver_identity(name), key


def _open_signed(outer: Mapping[str, Any], source: str, roots: set[str]) -> tuple[Any, str]:
    """Verify a signed policy envelope; returns the document and the root that signed it."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    where = f"trust policy {source}"
    try:
        envelope = Envelope.from_dict(
            {
                "payload": outer["payload"],
                "payloadType": outer["payloadType"],
                "signatures": [dict(s) for s in outer["signatures"]],
            }
        )
        offered = [PublicKey.from_pem(k["public_key"]) for k in outer.get("root_keys", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"{where} is not a valid signed policy envelope ({exc})") from None
    if envelope.payload_type != POLICY_PAYLOAD_TYPE:
        raise SignatureError(
            f"{where} has payload type {envelope.payload_type!r}, not {POLICY_PAYLOAD_TYPE!r}"
        )
    candidates = [k for k in offered if not roots or k.keyid in roots]
    if not candidates:
        raise SignatureError(
            f"{where} is signed by {', '.join(k.keyid[:16] for k in offered) or 'no key'}, "
            f"which is not a pinned root ({', '.join(r[:16] for r in sorted(roots))}). "
            "Sign it with the deployment's root key (secure-pipeline trust sign)."
        )
    for key in candidates:
        try:
            envelope.verify([key.sslib()], 1)
        except (VerificationError, ValueError):
            continue
        try:
            return json.loads(envelope.payload), key.keyid
        except ValueError as exc:
            raise SignatureError(f"{where}: the signed payload is not JSON ({exc})") from None
    raise SignatureError(
        f"{where}: the signature does not verify with root "
        f"{', '.join(k.keyid[:16] for k in candidates)}: the policy was changed after it was "
        "signed. Restore the signed policy, or review and sign the change with the root key."
    )


# -- development identities --------------------------------------------------------------------


def ensure_dev_identities() -> Path:
    """Generate (once) the development root, a key per identity and the signed dev policy.

    Returns:
        The development key directory.
    """
    directory = keyfiles.dev_keys_dir()
    if (directory / DEV_POLICY_FILE).exists():
        return directory  # written last, atomically: everything before it exists
    with keyfiles.dev_keys_lock() as directory:
        for name in (DEV_ROOT, *STAGE_IDENTITIES):
            if not (directory / f"{name}.pem").exists():
                keyfiles.generate_key(directory / f"{name}.pem", dev=True)
        policy_file = directory / DEV_POLICY_FILE
        if not policy_file.exists():
            document = policy_document(
                {name: [(directory / f"{name}.pub").read_bytes()] for name in STAGE_IDENTITIES},
                dev=True,
            )
            partial = policy_file.with_suffix(".partial")
            partial.write_bytes(sign_policy(document, directory / f"{DEV_ROOT}.pem"))
            partial.replace(policy_file)
    return directory


def dev_root_fingerprint(directory: Path) -> str:
    """Fingerprint of the development root in ``directory``."""
    return PublicKey.from_pem((directory / f"{DEV_ROOT}.pub").read_bytes()).keyid


_CACHE: dict[tuple[Any, ...], TrustPolicy] = {}


def trust_policy(environment: env.Environment | None = None) -> TrustPolicy:
    """The trust policy the environment establishes (cached while its file is unchanged).

    ``SECURE_PIPELINE_TRUST_POLICY`` names the file; ``SECURE_PIPELINE_TRUST_ROOT`` pins root
    fingerprints (comma-separated) and ``SECURE_PIPELINE_TRUST_POLICY_SHA256`` the digest.
    Locally, with no policy configured, the development policy.

    Raises:
        ConfigurationError: When no policy is configured in production, or it is refused.
        SignatureError: When its signature or pin does not hold.
    """
    environment = environment or env.current_environment()
    production = environment is env.Environment.PRODUCTION
    location = env.read("SECURE_PIPELINE_TRUST_POLICY")
    roots = tuple((env.read("SECURE_PIPELINE_TRUST_ROOT") or "").split(","))
    digest = env.read("SECURE_PIPELINE_TRUST_POLICY_SHA256")
    if location is None:
        if production:
            raise ConfigurationError(
                "production needs SECURE_PIPELINE_TRUST_POLICY (the signed trust policy: "
                "secure-pipeline trust init / trust sign) and SECURE_PIPELINE_TRUST_ROOT"
            )
        directory = ensure_dev_identities()
        path = directory / DEV_POLICY_FILE
        roots = (dev_root_fingerprint(directory),)
    else:
        path = Path(location)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigurationError(f"trust policy {path} cannot be read: {exc}") from None
    cache_key = (str(path), stat.st_mtime_ns, stat.st_size, roots, digest, production)
    if cache_key not in _CACHE:
        policy = load_policy(
            path.read_bytes(),
            source=str(path),
            pinned_roots=roots,
            pinned_digest=digest,
            production=production,
        )
        if location is None:
            policy = replace(policy, established="development root (local default)")
        _CACHE.clear()
        _CACHE[cache_key] = policy
    return _CACHE[cache_key]
