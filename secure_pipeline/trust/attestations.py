"""In-toto statements (v1) in DSSE envelopes: the project's evidence format.

Every verdict, registration, approval and promotion decision is a statement
(``https://in-toto.io/Statement/v1``) naming the digests it is about as subjects, signed into a
DSSE envelope (payload type ``application/vnd.in-toto+json``) by the identity that made it,
with securesystemslib. Any DSSE verifier holding the identity's public key can check one; what
this module adds is the rule of use: an envelope counts only if it verifies with a key the
trust policy gives to an identity allowed to make that kind of statement.

Envelopes are stored create-only under ``attestations/<kind>/<scope>/<sha256>.json`` in the
snapshot store. An insider who can write the store can add files there, but cannot make one
that verifies, and cannot change one without breaking its signature.
"""

import base64
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from secure_pipeline.canonical import canonical_json, sha256_hex
from secure_pipeline.errors import SignatureError
from secure_pipeline.trust.policy import TrustPolicy
from secure_pipeline.trust.signers import IdentitySigner

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
VERDICT_TYPE = "https://secure-pipeline.dev/attestation/verdict/v1"
REGISTRATION_TYPE = "https://secure-pipeline.dev/attestation/registration/v1"
APPROVAL_TYPE = "https://secure-pipeline.dev/attestation/approval/v1"
VSA_TYPE = "https://slsa.dev/verification_summary/v1"
PREFIX = "attestations/"
# A stored envelope is small JSON; anything larger is not one of ours.
MAX_ENVELOPE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Attestation:
    """A verified attestation.

    Attributes:
        data: The envelope's bytes, as stored.
        sha256: Their digest (how other attestations cite this one).
        statement: The verified statement.
        identity: The identity whose key signed it.
        keyid: That key's fingerprint.
    """

    data: bytes
    sha256: str
    statement: Mapping[str, Any]
    identity: str
    keyid: str

    @property
    def predicate(self) -> Mapping[str, Any]:
        """The statement's predicate."""
        return self.statement["predicate"]

    @property
    def subjects(self) -> dict[str, str]:
        """Subject name -> SHA-256 digest."""
        return {s["name"]: s["digest"]["sha256"] for s in self.statement["subject"]}


def statement(
    subjects: Mapping[str, str], predicate_type: str, predicate: Mapping[str, Any]
) -> dict[str, Any]:
    """An in-toto v1 statement about ``subjects`` (name -> SHA-256)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in subjects.items()],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


def sign(document: Mapping[str, Any], signer: IdentitySigner) -> bytes:
    """Sign a statement into a DSSE envelope (canonical JSON bytes)."""
    from securesystemslib.dsse import Envelope

    envelope = Envelope(canonical_json(document), PAYLOAD_TYPE, {})
    envelope.sign(signer.signer)
    return canonical_json(envelope.to_dict())


def open_envelope(
    data: bytes,
    trust: TrustPolicy,
    *,
    identities: Collection[str],
    predicate_type: str,
    what: str = "attestation",
) -> Attestation:
    """Verify an envelope: signed by a key of one of ``identities``, of the expected type.

    Args:
        data: The envelope's bytes.
        trust: The trust policy.
        identities: The identities allowed to make this statement.
        predicate_type: The predicate type it must have.
        what: How to name it in errors.

    Raises:
        SignatureError: Naming what failed: not an envelope, signed by a key the policy does
            not give to an allowed identity, a signature that does not verify, or a statement
            of another type.
    """
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
    from securesystemslib.signer import Signature

    if len(data) > MAX_ENVELOPE_BYTES:
        raise SignatureError(f"{what} is {len(data)} bytes, larger than any attestation")
    try:
        raw = json.loads(data)
        envelope = Envelope(base64.b64decode(raw["payload"], validate=True),
                            str(raw["payloadType"]), {})  # fmt: skip
        signatures = {
            str(s["keyid"]): Signature(str(s["keyid"]), base64.b64decode(s["sig"]).hex())
            for s in raw["signatures"]
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{what} is not a DSSE envelope ({type(exc).__name__})") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{what} has payload type {envelope.payload_type!r}, not in-toto")
    allowed = {
        key.keyid: (identity, key) for identity in identities for key in trust.keys_for(identity)
    }
    usable = [keyid for keyid in signatures if keyid in allowed]
    if not usable:
        known = [f"{k[:16]} ({trust.identity_of(k) or 'unknown key'})" for k in signatures]
        raise SignatureError(
            f"{what} is signed by {', '.join(known) or 'no key'}; only "
            f"{' or '.join(sorted(identities))} may make it (per the {trust.describe()})"
        )
    pae = envelope.pae()  # DSSE's pre-authentication encoding, from securesystemslib
    for keyid in usable:
        identity, key = allowed[keyid]
        try:
            key.sslib().verify_signature(signatures[keyid], pae)
        except (UnverifiedSignatureError, VerificationError, ValueError):
            continue
        document = _parse_statement(envelope.payload, predicate_type, what)
        return Attestation(data, sha256_hex(data), document, identity, keyid)
    raise SignatureError(
        f"{what}: the signature does not verify with {allowed[usable[0]][0]}'s key "
        f"{usable[0][:16]}: it was changed after it was signed"
    )


def _parse_statement(payload: bytes, predicate_type: str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(payload)
        subjects = document["subject"]
        valid = (
            document["_type"] == STATEMENT_TYPE
            and isinstance(subjects, list)
            and subjects
            and all(isinstance(s["digest"]["sha256"], str) for s in subjects)
            and isinstance(document["predicate"], dict)
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise SignatureError(f"{what} is signed but is not an in-toto v1 statement")
    if document["predicateType"] != predicate_type:
        raise SignatureError(
            f"{what} is a {document['predicateType']!r} statement, not {predicate_type!r}"
        )
    return document


def sha256_of(data: bytes) -> str:
    """Digest of an envelope's bytes: how attestations cite one another."""
    return sha256_hex(data)


def key_for(kind: str, scope: str, data: bytes) -> str:
    """Where an envelope is stored: ``attestations/<kind>/<scope>/<sha256>.json``."""
    return f"{PREFIX}{kind}/{scope}/{sha256_hex(data)}.json"


class ObjectStore(Protocol):
    """The three operations of a snapshot store that attestations use.

    A protocol rather than an import: storage signs its audit trail with this package.
    """

    def create_object(self, key: str, data: bytes) -> Any:
        """Store ``data`` under ``key`` create-only."""

    def list_keys(self, prefix: str) -> Iterable[str]:
        """Every key under ``prefix``."""

    def read_object(self, key: str) -> bytes:
        """The bytes stored under ``key``."""


def store_envelope(store: ObjectStore, kind: str, scope: str, data: bytes) -> str:
    """Store an envelope create-only; returns its key."""
    key = key_for(kind, scope, data)
    store.create_object(key, data)
    return key


def stored_envelopes(store: ObjectStore, kind: str, scope: str) -> Iterator[tuple[str, bytes]]:
    """Every object stored under ``attestations/<kind>/<scope>/`` (unverified)."""
    for key in store.list_keys(f"{PREFIX}{kind}/{scope}/"):
        try:
            yield key, store.read_object(key)
        except FileNotFoundError:
            continue
