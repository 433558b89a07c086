"""Tamper-evident audit trail: a signed hash chain of create-only records in the snapshot store.

Each record is one object, ``audit/<seq>.json``, holding its sequence number, the hash of the
record before it, its own hash over everything else, and a signature of that hash by the
identity that appended it (``ingest``, ``train``, ``release``, ``gate``, ``monitor`` or an
approver: see `secure_pipeline.trust`). Each identity may append only its own event types, so a
record is evidence of who acted, and recomputing the hashes of a rewritten trail needs no key
but signing it does. Appends are create-only on the next sequence number: when two runs race
for the same number, the store lets exactly one win and the other re-reads the new head and
retries, so the chain never forks.

After each record the appender writes a signed *checkpoint* of the head (count and hash),
create-only, to ``audit/checkpoints/<seq>.json``. A hash chain alone cannot tell that records
were cut from its end; the checkpoints can, as long as they cannot be deleted (S3 Object Lock in
production; see the README for what a local directory can and cannot show).

`AuditLog.verify` walks the chain, checks every link and signature and the latest checkpoint,
and names the first record that was edited, removed, reordered, forged or cut off. Records hold
digests, counts, names and redacted URIs — never row values — and a record's details are
size-limited so no table can be dumped into the trail by mistake.
"""

import csv
import hashlib
import io
import json
import random
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import IO, TYPE_CHECKING, Any

from secure_pipeline.errors import AuditChainError
from secure_pipeline.redaction import redact_text
from secure_pipeline.storage.snapshots import SnapshotStore, canonical_json, utc_now

if TYPE_CHECKING:
    from secure_pipeline.trust.policy import TrustPolicy
    from secure_pipeline.trust.signers import IdentitySigner

AUDIT_PREFIX = "audit/"
CHECKPOINT_PREFIX = "audit/checkpoints/"
CHECKPOINT_TYPE = "secure-pipeline/audit-checkpoint/v1"
SEGMENT_PREFIX = "audit/segments/"
INDEX_PREFIX = "audit/index/"
SEAL_TYPE = "secure-pipeline/audit-seal/v1"
SEGMENT_RECORDS = 1000
GENESIS_HASH = "0" * 64
MAX_DETAILS_BYTES = 8192
MAX_STRING_CHARS = 1024
_SEQ_DIGITS = 12
_SEGMENT_KEY = re.compile(r"audit/segments/(\d{12})\.(jsonl|seal\.json)")
_APPEND_ATTEMPTS = 64


def record_key(seq: int) -> str:
    """Store key of audit record ``seq`` (1-based)."""
    return f"{AUDIT_PREFIX}{seq:0{_SEQ_DIGITS}d}.json"


def checkpoint_key(seq: int) -> str:
    """Store key of the signed checkpoint of the trail at ``seq`` records."""
    return f"{CHECKPOINT_PREFIX}{seq:0{_SEQ_DIGITS}d}.json"


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the audit trail.

    Attributes:
        seq: Position in the chain, starting at 1.
        ts: UTC time the record was appended.
        run_id: The Dagster run that caused it, if any.
        actor: Who or what acted (a pipeline step, a CLI user).
        event: What happened, dotted (``ingestion.stored``, ``snapshot.stored``...).
        subject: The digest the event is about, if any.
        details: Small JSON facts: digests, counts, names, redacted URIs.
        prev_hash: ``hash`` of record ``seq - 1`` (zeros for the first).
        identity: The identity that appended it (and signed it).
        keyid: Fingerprint of the key that signed it.
        hash: SHA-256 of the canonical JSON of every field but ``hash`` and ``signature``.
        signature: The identity's signature of ``hash`` (hex).
    """

    seq: int
    ts: str
    run_id: str | None
    actor: str
    event: str
    subject: str | None
    details: Mapping[str, Any]
    prev_hash: str
    identity: str
    keyid: str
    hash: str
    signature: str

    def body(self) -> dict[str, Any]:
        """Every field but ``hash`` and ``signature``: what the hash covers."""
        # Not `asdict`: its deep copy was most of the cost of verifying a record.
        return {name: getattr(self, name) for name in _BODY_FIELDS}

    def computed_hash(self) -> str:
        """Recompute the hash from the record's content."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    def to_json(self) -> bytes:
        """Canonical JSON of the whole record."""
        return canonical_json({**self.body(), "hash": self.hash, "signature": self.signature})


_BODY_FIELDS = tuple(
    name for name in AuditRecord.__dataclass_fields__ if name not in ("hash", "signature")
)


@dataclass(frozen=True)
class ChainStatus:
    """Outcome of a successful verification.

    Attributes:
        count: Number of records, which is also the sequence number of the last one.
        head_hash: Hash of the last record (the genesis hash when empty).
    """

    count: int
    head_hash: str


def _sanitize(value: Any, path: str) -> Any:
    """Check a details value is small plain JSON; strip credentials from URIs."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        value = redact_text(value)
        if len(value) > MAX_STRING_CHARS:
            raise ValueError(
                f"audit detail {path} is {len(value)} characters; the limit is "
                f"{MAX_STRING_CHARS}. Record a digest or a count instead of the content."
            )
        return value
    if isinstance(value, Mapping):
        return {redact_text(str(k)): _sanitize(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise ValueError(
        f"audit detail {path} has type {type(value).__name__}; only JSON scalars, lists and "
        "mappings are recorded"
    )


def segment_key(last: int) -> str:
    """Store key of the sealed segment whose last record is ``last``."""
    return f"{SEGMENT_PREFIX}{last:0{_SEQ_DIGITS}d}.jsonl"


def seal_key(last: int) -> str:
    """Store key of the signed seal of the segment whose last record is ``last``."""
    return f"{SEGMENT_PREFIX}{last:0{_SEQ_DIGITS}d}.seal.json"


def index_prefix(subject: str) -> str:
    """Prefix of the index markers of ``subject`` (hashed: any subject makes a safe key)."""
    return f"{INDEX_PREFIX}{hashlib.sha256(subject.encode()).hexdigest()}/"


def _may_append(identity: str) -> bool:
    from secure_pipeline.trust.identities import APPROVER_PREFIX, EVENTS

    return identity.startswith(APPROVER_PREFIX) or bool(EVENTS.get(identity))


class _Checks:
    """What verification of one record needs, built once per walk."""

    def __init__(self, log: "AuditLog", trust: "TrustPolicy | None") -> None:
        from secure_pipeline.trust.identities import may_write
        from secure_pipeline.trust.policy import trust_policy
        from secure_pipeline.trust.signers import verifier

        self.log = log
        self.trust = trust or trust_policy()
        self.signature = verifier(self.trust)
        self.may_write = may_write
        self._identities: dict[str, str | None] = {}

    def record(self, record: AuditRecord, where: str, *, signature: bool) -> None:
        """Role, and (when asked) hash and signature of one record.

        Inside a sealed segment the seal covers the bytes, and its signer recomputed every
        hash and verified every signature before sealing: re-doing both is ``deep``. Measured,
        the hash alone was over half the cost of a default verify.
        """
        if signature and record.computed_hash() != record.hash:
            raise AuditChainError(f"{where} was edited: its content no longer matches its hash")
        if signature:
            signed_by = self.signature(
                record.keyid, record.signature, record.hash.encode(), record.seq
            )
            if signed_by is None:
                raise AuditChainError(
                    f"{where} ({record.event}) is not signed by a key of the trust policy "
                    f"(key {record.keyid[:16]}): it was forged or rewritten by someone without "
                    "the identity's key"
                )
        else:
            # The seal vouches for the signature; the role is still checked here.
            if record.keyid not in self._identities:
                self._identities[record.keyid] = self.trust.identity_of(record.keyid, retired=True)
            signed_by = self._identities[record.keyid]
        if signed_by != record.identity or not self.may_write(record.identity, record.event):
            raise AuditChainError(
                f"{where} is a {record.event!r} record signed by {signed_by}, which may not "
                "write it: a key was used outside its role"
            )

    def seal(self, last: int) -> dict[str, Any]:
        """The verified seal of the segment ending at ``last``."""
        store = self.log.store
        key = seal_key(last)
        try:
            document = json.loads(store.read_object(key))
        except FileNotFoundError:
            raise AuditChainError(
                f"the seal of segment {store.uri(segment_key(last))} is missing ({store.uri(key)})"
                ": it was deleted"
            ) from None
        except ValueError:
            raise AuditChainError(f"seal {store.uri(key)} is not JSON: it was edited") from None
        if not isinstance(document, dict):
            raise AuditChainError(f"seal {store.uri(key)} is not a seal: it was edited")
        body = {k: v for k, v in document.items() if k != "signature"}
        signed_by = self.signature(
            str(body.get("keyid")), str(document.get("signature")), canonical_json(body), last
        )
        if signed_by is None or signed_by != body.get("identity"):
            raise AuditChainError(
                f"seal {store.uri(key)} is not signed by a key of the trust policy: the segment "
                "was rewritten or re-sealed by someone without an identity's key"
            )
        if not _may_append(signed_by):
            raise AuditChainError(
                f"seal {store.uri(key)} is signed by {signed_by}, which may not append to the "
                "audit trail: a key was used outside its role"
            )
        first = body.get("first")
        if (
            body.get("type") != SEAL_TYPE
            or body.get("last") != last
            or not isinstance(first, int)
            or not 1 <= first <= last
        ):
            raise AuditChainError(
                f"seal {store.uri(key)} does not describe segment {last} (type "
                f"{body.get('type')!r}, records {first}–{body.get('last')}): it was moved"
            )
        return body

    def _segment_bytes(self, last: int, seal: Mapping[str, Any]) -> bytes:
        store = self.log.store
        key = segment_key(last)
        try:
            data = store.read_object(key)
        except FileNotFoundError:
            raise AuditChainError(
                f"segment {store.uri(key)} is missing but its seal exists: it was deleted"
            ) from None
        if hashlib.sha256(data).hexdigest() != seal.get("sha256"):
            raise AuditChainError(
                f"segment {store.uri(key)} does not match its seal's sha256: it was edited"
            )
        return data

    def segment_lines(self, last: int, seal: Mapping[str, Any]) -> list[bytes]:
        """The lines of a sealed segment whose bytes match the seal (one record each)."""
        lines = self._segment_bytes(last, seal).splitlines()
        if len(lines) != last - int(seal["first"]) + 1:
            raise AuditChainError(
                f"segment {self.log.store.uri(segment_key(last))} holds {len(lines)} lines, "
                f"but its seal names records {seal['first']}–{last}"
            )
        return lines

    def segment(self, last: int, seal: Mapping[str, Any]) -> list[AuditRecord]:
        """The records of a sealed segment: bytes match the seal, seqs and links hold inside."""
        store = self.log.store
        key = segment_key(last)
        data = self._segment_bytes(last, seal)
        records: list[AuditRecord] = []
        prev_hash = str(seal.get("prev_hash"))
        seq = int(seal["first"])
        uri = store.uri(key)
        try:
            # One parse for the segment: the bytes are the sealer's (their sha256 is sealed).
            documents = json.loads(b"[" + b",".join(data.splitlines()) + b"]")
        except ValueError as exc:
            raise AuditChainError(f"segment {uri} is not JSON lines ({exc})") from exc
        for document in documents:
            where = f"audit record {seq} (segment {uri})"
            try:
                record = AuditRecord(**document)
            except TypeError as exc:
                raise AuditChainError(f"{where} is not a valid record ({exc})") from exc
            if record.seq != seq:
                raise AuditChainError(f"{where} holds record {record.seq}")
            if record.prev_hash != prev_hash:
                raise AuditChainError(f"{where} does not follow record {seq - 1}")
            records.append(record)
            prev_hash = record.hash
            seq += 1
        if seq - 1 != last or prev_hash != seal.get("head"):
            raise AuditChainError(
                f"segment {store.uri(key)} ends at record {seq - 1} with hash "
                f"{prev_hash[:16]}…, but its seal names record {last} and head "
                f"{str(seal.get('head'))[:16]}…: records were removed or the seal is not its own"
            )
        return records


class AuditLog:
    """The audit trail stored in a snapshot store.

    Args:
        store: The store holding ``audit/`` records.
        segment_records: Records per sealed segment (small values in tests).
        trust: The trust policy the sealer checks records against (default: the environment's).
    """

    def __init__(
        self,
        store: SnapshotStore,
        *,
        segment_records: int = SEGMENT_RECORDS,
        trust: "TrustPolicy | None" = None,
    ) -> None:
        if segment_records < 1:
            raise ValueError(f"segment_records must be at least 1, found {segment_records}")
        self.store = store
        self.segment_records = segment_records
        self._trust = trust
        self._next_seq: int | None = None
        self._sealed_upto = 0

    # -- appending ---------------------------------------------------------------------------

    def append(
        self,
        event: str,
        *,
        signer: "IdentitySigner",
        actor: str,
        run_id: str | None = None,
        subject: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one signed record (and a checkpoint), retrying on a concurrent append.

        Args:
            event: Dotted event name.
            signer: The identity appending it; it must be allowed to write ``event``.
            actor: Who or what acted (a step, a command and its user), for people.
            run_id: The Dagster run, if any.
            subject: The digest the event is about.
            details: Small JSON facts (no personal data; URIs are redacted).

        Returns:
            The stored record.

        Raises:
            ValueError: When details are too large or not plain JSON.
            PermissionError: When the identity may not write this event type.
            AuditChainError: When the record to chain onto is damaged: nothing is appended to a
                broken chain.
        """
        from secure_pipeline.trust.identities import may_write

        if not may_write(signer.identity, event):
            raise PermissionError(
                f"the {signer.identity} identity may not write {event!r} records to the audit "
                "trail; each identity records only its own decisions"
            )
        clean = _sanitize(dict(details or {}), "details")
        if len(canonical_json(clean)) > MAX_DETAILS_BYTES:
            raise ValueError(
                f"audit details exceed {MAX_DETAILS_BYTES} bytes; record digests and counts, "
                "and keep reports in snapshots"
            )
        seq = self._next_seq or self._find_head() + 1
        for attempt in range(_APPEND_ATTEMPTS):
            prev_hash = self._hash_of(seq - 1)
            body = {
                "seq": seq,
                "ts": utc_now(),
                "run_id": run_id,
                "actor": actor,
                "event": event,
                "subject": subject,
                "details": clean,
                "prev_hash": prev_hash,
                "identity": signer.identity,
                "keyid": signer.keyid,
            }
            digest = hashlib.sha256(canonical_json(body)).hexdigest()
            record = AuditRecord(**body, hash=digest, signature=signer.sign(digest.encode()))
            if self.store.exists(record_key(seq + 1)) and not self.store.exists(record_key(seq)):
                # A record is only ever written after its predecessor, so a free slot with a
                # successor means a record was deleted. Filling the hole would erase the
                # evidence of it.
                raise AuditChainError(
                    f"refusing to append: audit record {seq} is missing but record {seq + 1} "
                    "exists. Run `secure-pipeline audit verify`."
                )
            if self.store.try_create_object(record_key(seq), record.to_json()):
                self._next_seq = seq + 1
                if subject is not None:
                    # Before the checkpoint: a record the checkpoint covers has its marker.
                    self._mark(record)
                self._checkpoint(record, signer)
                self._seal_due(seq, signer)
                return record
            # Another writer took this number; others may have appended since, so look for
            # the head again instead of stepping one record at a time.
            seq = max(seq + 1, self._find_head() + 1)
            time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise AuditChainError(
            f"could not append to the audit trail after {_APPEND_ATTEMPTS} attempts: too many "
            "concurrent writers; retry the operation"
        )

    def _checkpoint(self, record: AuditRecord, signer: "IdentitySigner") -> None:
        """Write the signed checkpoint of the trail ending at ``record``."""
        body = {
            "type": CHECKPOINT_TYPE,
            "count": record.seq,
            "head": record.hash,
            "ts": record.ts,
            "identity": signer.identity,
            "keyid": signer.keyid,
        }
        document = {**body, "signature": signer.sign(canonical_json(body))}
        self.store.try_create_object(checkpoint_key(record.seq), canonical_json(document))

    def _hash_of(self, seq: int) -> str:
        if seq == 0:
            return GENESIS_HASH
        record = self._load(seq)
        if record.computed_hash() != record.hash:
            raise AuditChainError(
                f"refusing to append: audit record {seq} ({self.store.uri(record_key(seq))}) "
                "does not match its hash. Run `secure-pipeline audit verify`."
            )
        return record.hash

    def _find_head(self) -> int:
        """Highest stored sequence number, by galloping then binary search over `exists`.

        Sequence numbers are contiguous (a gap is tampering, which `verify` reports), so the
        head is found with O(log n) existence checks instead of listing every record.
        """
        if not self.store.exists(record_key(1)):
            return 0
        low, high = 1, 2
        while self.store.exists(record_key(high)):
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            if self.store.exists(record_key(mid)):
                low = mid
            else:
                high = mid
        return low

    def _load(self, seq: int) -> AuditRecord:
        key = record_key(seq)
        try:
            data = self.store.read_object(key)
        except FileNotFoundError:
            raise AuditChainError(
                f"audit record {seq} is missing ({self.store.uri(key)})"
            ) from None
        return self._parse(seq, data)

    def _parse(self, seq: int, data: bytes) -> AuditRecord:
        try:
            document = json.loads(data)
            if isinstance(document, dict) and "signature" not in document:
                raise AuditChainError(
                    f"audit record {seq} ({self.store.uri(record_key(seq))}) is not signed: "
                    "every record is signed by the identity that appended it, so this one was "
                    "forged or written by a version that did not sign records"
                )
            return AuditRecord(**document)
        except (ValueError, TypeError) as exc:
            raise AuditChainError(
                f"audit record {seq} ({self.store.uri(record_key(seq))}) is not a valid record "
                f"({exc}): it was edited"
            ) from exc

    # -- sealing and the subject index -------------------------------------------------------

    def _mark(self, record: AuditRecord) -> None:
        """Write the create-only index marker of a record with a subject (its hash)."""
        assert record.subject is not None
        key = f"{index_prefix(record.subject)}{record.seq:0{_SEQ_DIGITS}d}"
        # A marker already there (a crashed append, a sealer's recovery, or a forgery) is left
        # alone: `records_about` checks every marker against the record it names.
        self.store.try_create_object(key, record.hash.encode())

    def _seal_due(self, seq: int, signer: "IdentitySigner") -> None:
        """Seal every full segment up to ``seq`` that is not sealed yet, oldest first.

        Usually one existence check (the newest full segment's seal); a crash between a
        segment's last record and its seal is repaired here by the next append.
        """
        n = self.segment_records
        pending: list[int] = []
        last = seq // n * n
        while last > self._sealed_upto and not self.store.exists(seal_key(last)):
            pending.append(last)
            last -= n
        self._sealed_upto = max(self._sealed_upto, last)
        for last in reversed(pending):
            self._seal(last, signer)
            self._sealed_upto = last

    def _seal(self, last: int, signer: "IdentitySigner") -> None:
        """Check the per-record objects of one segment as `verify` does, then seal them."""
        checks = _Checks(self, self._trust)
        first = last - self.segment_records + 1
        prev_hash = GENESIS_HASH if first == 1 else str(checks.seal(first - 1)["head"])
        segment_prev = prev_hash
        lines: list[bytes] = []
        for seq in range(first, last + 1):
            record = self._load(seq)
            where = f"audit record {seq} ({self.store.uri(record_key(seq))})"
            if record.seq != seq:
                raise AuditChainError(f"{where} holds record {record.seq}: cannot seal it")
            if record.prev_hash != prev_hash:
                raise AuditChainError(f"{where} does not follow record {seq - 1}: cannot seal it")
            checks.record(record, where, signature=True)
            if record.subject is not None:
                self._mark(record)
            lines.append(record.to_json())
            prev_hash = record.hash
        data = b"\n".join(lines) + b"\n"
        # A key already taken: another appender sealed it concurrently (same records, same
        # bytes); anything else under the key was planted.
        if (
            not self.store.try_create_object(segment_key(last), data)
            and self.store.read_object(segment_key(last)) != data
        ):
            raise AuditChainError(
                f"segment {self.store.uri(segment_key(last))} exists but does not hold "
                f"records {first}–{last}: it was planted. Run `secure-pipeline audit verify`."
            )
        body = {
            "type": SEAL_TYPE,
            "first": first,
            "last": last,
            "sha256": hashlib.sha256(data).hexdigest(),
            "prev_hash": segment_prev,
            "head": prev_hash,
            "identity": signer.identity,
            "keyid": signer.keyid,
            "ts": utc_now(),
        }
        document = {**body, "signature": signer.sign(canonical_json(body))}
        self.store.try_create_object(seal_key(last), canonical_json(document))

    # -- reading and verifying ---------------------------------------------------------------

    def verify(
        self,
        anchors: Mapping[int, str] | None = None,
        trust: "TrustPolicy | None" = None,
        *,
        resume: ChainStatus | None = None,
        deep: bool = False,
    ) -> ChainStatus:
        """Check every segment, record, link and signature and the latest checkpoint.

        Args:
            anchors: Known ``{seq: hash}`` pairs recorded elsewhere (the Dagster event log
                records the audit record of every materialization and check). A chain cut short
                before an anchor, or rewritten from an anchor on, fails.
            trust: The trust policy naming the identities' keys (default: the environment's).
            resume: A status an earlier successful verify returned, held by the verifier
                (never read from the store): the record at ``resume.count`` must still have
                ``resume.head_hash``, and only what follows it is verified.
            deep: Also re-verify the signature of every record inside sealed segments (by
                default a segment's seal stands for the signatures its sealer verified).

        Returns:
            The chain's length and head.

        Raises:
            AuditChainError: Naming the first record or segment that was edited, removed,
                inserted, reordered, forged, signed by an identity that may not write it, or
                cut off.
        """
        status = resume or ChainStatus(0, GENESIS_HASH)
        for _record, status in self._walk(anchors, trust, resume=resume, deep=deep):  # noqa: B007
            pass
        return status

    def verified_records(self, trust: "TrustPolicy | None" = None) -> Iterator[AuditRecord]:
        """Every record in order, each checked against the chain and its signer as it is read.

        Raises:
            AuditChainError: At the first broken record (the records before it were yielded).
        """
        for record, _status in self._walk(None, trust):
            yield record

    def _sealed_lasts(self, after: int) -> list[int]:
        """Last seqs of the sealed segments ending after ``after``, in order (one listing)."""
        start = f"{SEGMENT_PREFIX}{after:0{_SEQ_DIGITS}d}.~" if after else None
        found: dict[int, set[str]] = {}
        for key in self.store.list_keys(SEGMENT_PREFIX, start):
            match = _SEGMENT_KEY.fullmatch(key)
            if not match:
                raise AuditChainError(
                    f"unexpected object {self.store.uri(key)} among the audit segments: "
                    "segments are named audit/segments/<12-digit seq>.jsonl|.seal.json; "
                    "something was added by hand"
                )
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
        lasts: list[int] = []
        unsealed: int | None = None
        for last in sorted(found):
            kinds = found[last]
            if "seal.json" in kinds and unsealed is not None:
                raise AuditChainError(
                    f"segment {self.store.uri(segment_key(unsealed))} has no seal but the later "
                    f"segment {self.store.uri(segment_key(last))} has one: segments are sealed "
                    "oldest first, so a seal was deleted"
                )
            if "seal.json" not in kinds:
                # Written, not yet sealed (a crash): its records are verified one by one.
                unsealed = last if unsealed is None else unsealed
                continue
            lasts.append(last)
        return lasts

    def _walk(
        self,
        anchors: Mapping[int, str] | None,
        trust: "TrustPolicy | None",
        *,
        resume: ChainStatus | None = None,
        deep: bool = False,
    ) -> Iterator[tuple[AuditRecord, ChainStatus]]:
        """Yield each record with the chain status up to it, checking every link on the way.

        Sealed segments first (one listing of ``audit/segments/``, one seal signature and one
        read per segment), then the per-record objects after the last sealed record.
        """
        checks = _Checks(self, trust)
        start = resume.count if resume else 0
        prev_hash = resume.head_hash if resume else GENESIS_HASH
        resume_hash, expected = prev_hash, start + 1
        resumed = start == 0
        if resume is not None and start == 0 and resume.head_hash != GENESIS_HASH:
            raise AuditChainError("the resume status names 0 records but a non-genesis head")

        def anchored(record: AuditRecord, where: str) -> None:
            if anchors and record.seq in anchors and anchors[record.seq] != record.hash:
                raise AuditChainError(
                    f"{where} has hash {record.hash}, but {anchors[record.seq]} was recorded for "
                    "it elsewhere: the trail was rewritten from this record on"
                )

        for last in self._sealed_lasts(start):
            seal = checks.seal(last)
            first = int(seal["first"])
            uri = self.store.uri(segment_key(last))
            if first > expected:
                raise AuditChainError(
                    f"audit record {expected} is missing: the sealed trail goes from record "
                    f"{expected - 1} to segment {uri} (records {first}–{last}); a segment was "
                    "deleted"
                )
            if first < expected and not (resume is not None and first <= start < last):
                raise AuditChainError(
                    f"segment {uri} starts at record {first}, but record {expected} was "
                    "expected: segments overlap or were moved"
                )
            if first == expected and seal.get("prev_hash") != prev_hash:
                raise AuditChainError(
                    f"audit record {first} (segment {uri}) does not follow record {first - 1}: "
                    f"its seal names prev_hash {str(seal.get('prev_hash'))[:16]}…, but record "
                    f"{first - 1} hashes to {prev_hash[:16]}…; segments were swapped or replaced"
                )
            for record in checks.segment(last, seal):
                where = f"audit record {record.seq} (segment {uri})"
                checks.record(record, where, signature=deep)
                anchored(record, where)
                if record.seq < start:
                    continue
                if record.seq == start:
                    if record.hash != prev_hash:
                        raise AuditChainError(
                            f"{where} has hash {record.hash[:16]}…, but the resume status "
                            f"names {prev_hash[:16]}…: the trail was rewritten since"
                        )
                    resumed = True
                    continue
                yield record, ChainStatus(record.seq, record.hash)
            prev_hash, expected = str(seal["head"]), last + 1
        # The resume point is in the tail, or the last record of a segment not re-read.
        if not resumed and self.record(start, checks.trust).hash != resume_hash:
            raise AuditChainError(
                f"audit record {start} no longer has the hash the resume status names "
                f"({resume_hash[:16]}…): the trail was rewritten since"
            )
        seq = expected
        while True:
            key = record_key(seq)
            try:
                data = self.store.read_object(key)
            except FileNotFoundError:
                break
            record = self._parse(seq, data)
            where = f"audit record {seq} ({self.store.uri(key)})"
            if record.seq != seq:
                raise AuditChainError(
                    f"{where} holds record {record.seq}: records were moved or swapped"
                )
            if record.computed_hash() != record.hash:
                raise AuditChainError(f"{where} was edited: its content no longer matches its hash")
            if record.prev_hash != prev_hash:
                raise AuditChainError(
                    f"{where} does not follow record {seq - 1}: its prev_hash "
                    f"{record.prev_hash[:16]}… differs from {prev_hash[:16]}…; a record before "
                    "it was replaced or the records were reordered"
                )
            checks.record(record, where, signature=True)
            anchored(record, where)
            prev_hash = record.hash
            seq += 1
            yield record, ChainStatus(record.seq, record.hash)
        head = seq - 1
        for later in (head + 2, head + 3):
            if self.store.exists(record_key(later)):
                raise AuditChainError(
                    f"audit record {head + 1} is missing: the trail goes from record {head} to "
                    f"record {later} ({self.store.uri(record_key(later))}); a record was deleted"
                )
        beyond = sorted(s for s in (anchors or {}) if s > head)
        if beyond:
            raise AuditChainError(
                f"audit record {beyond[0]} was recorded elsewhere but the trail ends at "
                f"record {head}: records were removed from the end"
            )
        self._check_checkpoint(head, prev_hash, checks.trust)

    def _check_checkpoint(self, head: int, head_hash: str, trust: "TrustPolicy") -> None:
        """The latest signed checkpoint must describe this trail: nothing was cut off its end."""
        later = next(iter(self.store.list_keys(CHECKPOINT_PREFIX, checkpoint_key(head))), None)
        if later is not None:
            raise AuditChainError(
                f"the trail ends at record {head}, but a signed checkpoint exists at "
                f"{self.store.uri(later)}: records were removed from the end"
            )
        if head == 0:
            return
        checkpoint = self.latest_checkpoint(trust, at_most=head)
        if checkpoint is None:
            raise AuditChainError(
                f"the trail has {head} records but no signed checkpoint: checkpoints were "
                "deleted, or the records were written without the identities' keys"
            )
        count, recorded = checkpoint
        if count == head and recorded != head_hash:
            raise AuditChainError(
                f"the signed checkpoint of record {count} names head {recorded[:16]}…, but the "
                f"trail's record {count} hashes to {head_hash[:16]}…: the trail was rewritten"
            )
        if count < head:
            record = self._load(count)
            if record.hash != recorded:
                raise AuditChainError(
                    f"the signed checkpoint of record {count} names head {recorded[:16]}…, but "
                    f"record {count} hashes to {record.hash[:16]}…: the trail was rewritten"
                )

    def record(self, seq: int, trust: "TrustPolicy | None" = None) -> AuditRecord:
        """One record, checked against its own hash and signature (not the whole chain).

        A sealed record is read from its segment (checked against the seal), never from its
        superseded per-record object.

        Raises:
            AuditChainError: When it is missing, edited or not signed by its identity.
        """
        return self._record(seq, _Checks(self, trust), {})

    def _record(self, seq: int, checks: _Checks, segments: dict[int, list[bytes]]) -> AuditRecord:
        n = self.segment_records
        last = -(-seq // n) * n
        if last not in segments and self.store.exists(seal_key(last)):
            seal = checks.seal(last)
            segments[last] = checks.segment_lines(last, seal)
        if last in segments:
            lines = segments[last]
            where = f"audit record {seq} (segment {self.store.uri(segment_key(last))})"
            if not last - len(lines) < seq <= last:
                raise AuditChainError(
                    f"segment {self.store.uri(segment_key(last))} holds records "
                    f"{last - len(lines) + 1}–{last}, not {seq}: it does not match the "
                    f"trail's segments of {n} records"
                )
            # Only this record's line is parsed: the seal covers every byte of the segment.
            record = self._parse(seq, lines[seq - last - 1])
        else:
            record = self._load(seq)
            where = f"audit record {seq} ({self.store.uri(record_key(seq))})"
        if record.seq != seq:
            raise AuditChainError(f"{where} holds record {record.seq}: it was moved")
        checks.record(record, where, signature=True)
        return record

    def records_about(self, subject: str, trust: "TrustPolicy | None" = None) -> list[AuditRecord]:
        """Every record about ``subject``, found through the index, each verified.

        One listing of the subject's markers, then each record is read (from its segment or
        object) and checked: cost grows with the records about the subject, not the trail.
        For facts that must not be hidden by a deleted marker (erasures), scan
        `verified_records` instead.

        Raises:
            AuditChainError: When a marker names a record that is not about ``subject`` or has
                another hash (a forged marker), or a record does not verify.
        """
        checks = _Checks(self, trust)
        prefix = index_prefix(subject)
        segments: dict[int, list[bytes]] = {}
        found: list[AuditRecord] = []
        for key in self.store.list_keys(prefix):
            name = key[len(prefix) :]
            marker = self.store.read_object(key).decode(errors="replace")
            if not (name.isdigit() and len(name) == _SEQ_DIGITS):
                raise AuditChainError(
                    f"unexpected object {self.store.uri(key)} in the audit index: markers are "
                    "named by a 12-digit seq; it was added by hand"
                )
            record = self._record(int(name), checks, segments)
            if record.hash != marker or record.subject != subject:
                raise AuditChainError(
                    f"index marker {self.store.uri(key)} is forged: it names hash "
                    f"{marker[:16]}… about {subject[:16]}…, but record {record.seq} has hash "
                    f"{record.hash[:16]}… about {str(record.subject)[:16]}…; remove it"
                )
            found.append(record)
        return found

    def latest_checkpoint(
        self, trust: "TrustPolicy | None" = None, *, at_most: int | None = None
    ) -> tuple[int, str] | None:
        """The newest checkpoint whose signature verifies: ``(count, head hash)``.

        Found with a few existence checks (the checkpoint at the head, or just below it when a
        writer stopped between a record and its checkpoint), not by reading the trail, so it
        costs the same at 1k records as at 100k.

        Raises:
            AuditChainError: When the checkpoint found is not validly signed.
        """
        from secure_pipeline.trust.policy import trust_policy
        from secure_pipeline.trust.signers import verifier

        head = self._find_head() if at_most is None else at_most
        trust = trust or trust_policy()
        for seq in range(head, max(0, head - 64), -1):
            key = checkpoint_key(seq)
            try:
                document = json.loads(self.store.read_object(key))
            except FileNotFoundError:
                continue
            except ValueError:
                raise AuditChainError(f"checkpoint {self.store.uri(key)} is not JSON") from None
            body = {k: v for k, v in document.items() if k != "signature"}
            signed_by = verifier(trust)(
                str(body.get("keyid")), str(document.get("signature")), canonical_json(body), seq
            )
            if (
                signed_by is None
                or signed_by != body.get("identity")
                or body.get("type") != CHECKPOINT_TYPE
                or body.get("count") != seq
            ):
                raise AuditChainError(
                    f"checkpoint {self.store.uri(key)} is not signed by a key of the trust "
                    "policy: it was forged or edited"
                )
            return seq, str(body["head"])
        return None

    # -- export ------------------------------------------------------------------------------

    def export(self, out: IO[str], fmt: str = "jsonl") -> ChainStatus:
        """Verify the chain, then write every record as JSON lines or CSV.

        Args:
            out: Text stream to write to.
            fmt: ``jsonl`` or ``csv``.

        Returns:
            The verified chain status.

        Raises:
            AuditChainError: When the chain is broken; nothing is written.
            ValueError: On an unknown format.
        """
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"export format must be 'jsonl' or 'csv', found {fmt!r}")
        buffer = io.StringIO()
        count, head = 0, GENESIS_HASH
        writer = None
        if fmt == "csv":
            writer = csv.DictWriter(
                buffer, fieldnames=list(AuditRecord.__dataclass_fields__), lineterminator="\n"
            )
            writer.writeheader()
        # Records are checked as they are read, and nothing reaches ``out`` unless the whole
        # chain verified: an export handed to an auditor is always of an intact trail.
        for record, _status in self._walk(None, None):
            count, head = record.seq, record.hash
            if writer is None:
                buffer.write(record.to_json().decode() + "\n")
            else:
                row = asdict(record)
                row["details"] = canonical_json(row["details"]).decode()
                writer.writerow(row)
        out.write(buffer.getvalue())
        return ChainStatus(count, head)
