"""Erasure by crypto-shredding: find every snapshot holding a subject, destroy its data keys.

A request names identifiers; only their subject hashes (`secure_pipeline.privacy.subjects`)
are ever stored. `erase`:

1. signs the hashes onto the pipeline's erasure list (the privacy identity's DSSE envelope), so
   every later ingestion drops those subjects' records at entry;
2. locates what holds each subject (`locate`): the ingestions whose subject index lists it (an
   index that is missing, or is not the one the ingest identity's signed ``ingestion.stored``
   record names, counts as holding every subject: fail safe), the snapshots derived from them
   (validated rows, quarantine, features: found through the manifests' upstream digests,
   transitively), and the models trained on those features and their registered versions
   (from the verified audit trail);
3. flags those models (`secure_pipeline.privacy.flags`): promotion, serving and release refuse
   them, or warn, as ``privacy.erased_data_models`` says;
4. writes the request's receipt to the audit trail (``privacy.erasure``: hashed ids, snapshots,
   models, time; never an identifier);
5. shreds what may be shredded now: the holding ingestions that are not the pipeline's latest
   (a newer ingestion, which excludes the subject, replaces them) and what derives from them;
   with ``now`` everything, the latest too. A raw file an unaffected ingestion shares (unchanged
   between ingestions, so one snapshot) is kept: it cannot hold the subject. Each shred is
   receipted (``privacy.shredded``: hashed ids, snapshot keys, key ids, reason, time).

`enforce` (the daily privacy job, and ``secure-pipeline privacy enforce``) completes pending
erasures once a newer ingestion exists and applies the source's retention
(`secure_pipeline.privacy.retention`). Both are idempotent: what is shredded stays shredded,
nothing is shredded, flagged or receipted twice.
"""

import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from secure_pipeline.errors import ConfigurationError, IntegrityError, PolicyViolation
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.audit import MAX_DETAILS_BYTES, AuditLog, AuditRecord
from secure_pipeline.storage.snapshots import (
    FILESET_FORMAT,
    MANIFEST_SUFFIX,
    SnapshotStore,
    snapshot_key,
    utc_now,
)
from secure_pipeline.trust.identities import PRIVACY
from secure_pipeline.trust.policy import TrustPolicy

if TYPE_CHECKING:
    from secure_pipeline.trust.signers import IdentitySigner

ERASURE = "erasure"
RETENTION = "retention"
DEFAULT_REASON = "data subject request (GDPR Art. 17)"
# Room left in an audit record's details for the fields beside the lists.
_DETAILS_BUDGET = MAX_DETAILS_BYTES - 1024
# Subjects per flag envelope (a flag must stay well under the envelope size limit).
_FLAG_SUBJECTS = 1000
_SHA = frozenset("0123456789abcdef")


# -- what holds a subject ------------------------------------------------------------------


@dataclass(frozen=True)
class IngestionHold:
    """One ingestion holding a subject.

    Attributes:
        raw_sha256: Digest of its raw fileset index (the raw asset's data version).
        raw_key: The raw fileset index's store key.
        ingested_at: The ingest identity's signed time of its first ``ingestion.stored``.
        members: Member name -> store key of its raw files.
        latest: Whether it is the pipeline's latest ingestion.
        evidence: Why it counts: ``subject index`` (its signed index lists the subject), or
            what is wrong with its index (then it is taken to hold every subject).
    """

    raw_sha256: str
    raw_key: str
    ingested_at: str
    members: Mapping[str, str]
    latest: bool
    evidence: str


@dataclass(frozen=True)
class DerivedHold:
    """A snapshot derived from a holding ingestion.

    Attributes:
        key: Its store key.
        sha256: Its digest.
        asset: Its asset path.
        ingestion: The raw index digest it derives from.
    """

    key: str
    sha256: str
    asset: str
    ingestion: str


@dataclass(frozen=True)
class ModelHold:
    """A model trained on features derived from a holding ingestion.

    Attributes:
        model_sha256: The model's digest.
        features_sha256: The feature table it was trained on.
        versions: Its registered versions.
        ingestion: The raw index digest its features derive from.
    """

    model_sha256: str
    features_sha256: str
    versions: tuple[str, ...]
    ingestion: str


@dataclass
class Located:
    """Everything that holds one subject.

    Attributes:
        subject_hash: The subject.
        ingestions: The ingestions holding it.
        derived: The snapshots derived from them.
        models: The models trained on those.
        problems: What could not be established (each one made the search wider, not narrower).
    """

    subject_hash: str
    ingestions: list[IngestionHold] = field(default_factory=list)
    derived: list[DerivedHold] = field(default_factory=list)
    models: list[ModelHold] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def snapshot_keys(self, ingestion: str | None = None) -> list[str]:
        """Store keys of every raw member and derived snapshot (of one ingestion, if given)."""
        keys = [
            k
            for i in self.ingestions
            if ingestion in (None, i.raw_sha256)
            for k in i.members.values()
        ]
        keys += [d.key for d in self.derived if ingestion in (None, d.ingestion)]
        return list(dict.fromkeys(keys))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (no identifier: only its hash)."""
        return {
            "subject_hash": self.subject_hash,
            "ingestions": [asdict(i) | {"members": dict(i.members)} for i in self.ingestions],
            "derived": [asdict(d) for d in self.derived],
            "models": [asdict(m) | {"versions": list(m.versions)} for m in self.models],
            "problems": list(self.problems),
        }


@dataclass
class _Ingestion:
    raw_sha256: str
    raw_key: str
    ingested_at: str
    seq: int
    members: dict[str, str]
    signed_index: list[Mapping[str, Any]]
    index_problem: str | None = None
    catalogue: Mapping[str, Any] | None = None
    partition: str | None = None  # the day of a partitioned source


class _Inventory:
    """What a pipeline has stored, read once: ingestions, derived snapshots, models.

    Ingestions are the raw indexes the ingest identity recorded (signed ``ingestion.stored``),
    so a fileset or catalogue someone added to the store is never a reason to shred anything.
    """

    def __init__(self, store: SnapshotStore, pipeline: PipelineSpec, trust: TrustPolicy) -> None:
        self.store = store
        self.pipeline = pipeline
        self.trust = trust
        self.requested: set[str] = set()
        self.problems: list[str] = []
        self.ingestions: dict[str, _Ingestion] = {}
        self.trained: dict[str, set[str]] = {}  # features digest -> model digests
        self.versions: dict[str, set[str]] = {}  # model digest -> registered versions
        self._read_trail()
        # The current data: the latest ingestion, or each day's of a partitioned source.
        newest: dict[str | None, _Ingestion] = {}
        for entry in self.ingestions.values():
            if entry.partition not in newest or entry.seq > newest[entry.partition].seq:
                newest[entry.partition] = entry
        self.latest = frozenset(e.raw_sha256 for e in newest.values())
        self._read_catalogues()
        # A raw file unchanged between two ingestions is one snapshot in both of them.
        self.member_of: dict[str, set[str]] = {}
        for digest, entry in self.ingestions.items():
            for key in entry.members.values():
                self.member_of.setdefault(key, set()).add(digest)
        self.derived = self._derivations()

    # -- the verified audit trail --------------------------------------------------------

    def _read_trail(self) -> None:
        name = self.pipeline.name
        raw_path = [name, self.pipeline.names.raw_name]
        for record in AuditLog(self.store).verified_records(self.trust):
            details = record.details
            if record.event == "ingestion.stored" and details.get("pipeline") == name:
                digest = str(record.subject)
                entry = self.ingestions.get(digest)
                day = details.get("partition")
                day = str(day) if day is not None else None
                if entry is None:
                    entry = self.ingestions[digest] = _Ingestion(
                        digest, snapshot_key(raw_path, digest, "json", day), record.ts,
                        record.seq, {}, [], partition=day,
                    )  # fmt: skip
                entry.seq = record.seq  # the latest ingestion is the last one recorded
                index = _signed_index(details)
                if index is not None:
                    entry.signed_index.append(index)
            elif record.event == "privacy.erasure" and details.get("pipeline") == name:
                # The signed request: what the erasure list must still hold.
                self.requested.update(str(h) for h in details.get("subjects") or ())
            elif record.event == "model.trained" and details.get("pipeline") == name:
                # One features snapshot, or each day of a partitioned model's window.
                window = details.get("training_features")
                trained = window if isinstance(window, list) else []
                for features in [details.get("features_sha256"), *trained]:
                    if isinstance(features, str) and record.subject:
                        self.trained.setdefault(features, set()).add(record.subject)
            elif (
                record.event == "model.registered"
                and details.get("name") == self.pipeline.names.model_name
                and record.subject
            ):
                self.versions.setdefault(record.subject, set()).add(str(details.get("version")))

    # -- subject index catalogues and raw members ---------------------------------------

    def _read_catalogues(self) -> None:
        from secure_pipeline.privacy.subjects import ingestions

        catalogues = {str(c.get("raw_index_sha256")): c for c in ingestions(
            self.store, self.pipeline.name)}  # fmt: skip
        for digest in sorted(set(catalogues) - set(self.ingestions)):
            self.problems.append(
                f"subject index catalogue {catalogues[digest]['catalogue_key']} names an "
                "ingestion the audit trail does not record; ignored"
            )
        for digest, entry in self.ingestions.items():
            entry.members = self._members(entry)
            catalogue = catalogues.get(digest)
            if not entry.signed_index:
                entry.index_problem = (
                    "its signed ingestion record names no subject index (ingested before the "
                    "index existed, or without identifier columns)"
                )
            elif catalogue is None:
                entry.index_problem = "its subject index catalogue is missing"
            elif catalogue.get("problem") or catalogue.get("catalogue_sha256") not in {
                i.get("catalogue_sha256") for i in entry.signed_index
            }:
                entry.index_problem = (
                    "its subject index catalogue is not the one its signed ingestion record names"
                )
            else:
                entry.catalogue = catalogue

    def _members(self, entry: _Ingestion) -> dict[str, str]:
        """The raw files of an ingestion, from its fileset index (verified by its digest)."""
        try:
            index = json.loads(self.store.read_bytes((entry.raw_key, entry.raw_sha256)))
            if index.get("format") != FILESET_FORMAT:
                raise ValueError("not a fileset index")
            return {str(n): str(m["key"]) for n, m in sorted(index["files"].items())}
        except (IntegrityError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.problems.append(
                f"the raw index {entry.raw_key} of a recorded ingestion cannot be read ({exc}); "
                "its files cannot be found or shredded"
            )
            return {}

    # -- derived snapshots ----------------------------------------------------------------

    def _derivations(self) -> dict[str, list[DerivedHold]]:
        """Raw index digest -> the row-level snapshots derived from it, transitively.

        A snapshot with no rows (an empty quarantine) holds nobody's data and is not listed;
        being content-addressed, it is also the same object for every ingestion that has one.
        """
        names = self.pipeline.names
        directories = [
            f"{self.pipeline.name}/{names.validated_name}",
            f"{self.pipeline.name}/{names.validated_name}/_quarantine",
            f"{self.pipeline.name}/features",
        ]
        children: dict[str, list[tuple[str, str, str, bool]]] = {}
        for asset in directories:
            prefix = f"snapshots/{asset}/"
            for key in self.store.list_keys(prefix):
                rest = key[len(prefix) :]
                if rest.endswith(MANIFEST_SUFFIX):
                    continue
                parts = rest.split("/")
                # <sha>.<ext>, or <day>/<sha>.<ext> of a partitioned asset; a folder named
                # with "_" is an asset of its own (the quarantine, the training windows).
                if len(parts) > 2 or (len(parts) == 2 and parts[0].startswith("_")):
                    continue
                rest = parts[-1]
                digest = rest.split(".", 1)[0]
                if len(digest) != 64 or not set(digest) <= _SHA:
                    continue
                try:
                    manifest = self.store.read_manifest((key, digest))
                except IntegrityError as exc:
                    self.problems.append(f"manifest of {key} cannot be read ({exc})")
                    continue
                empty = manifest.extra.get("rows") == 0
                for parent in set(manifest.upstream.values()):
                    children.setdefault(parent, []).append((key, digest, asset, empty))
        derived: dict[str, list[DerivedHold]] = {}
        for origin in self.ingestions:
            found: dict[str, DerivedHold] = {}
            frontier, reached = [origin], {origin}
            while frontier:
                parent = frontier.pop()
                for key, digest, asset, empty in children.get(parent, []):
                    if not empty and key not in found:
                        found[key] = DerivedHold(key, digest, asset, origin)
                    if digest not in reached:
                        reached.add(digest)
                        frontier.append(digest)
            derived[origin] = sorted(found.values(), key=lambda d: (d.asset, d.key))
        return derived

    # -- locating ---------------------------------------------------------------------------

    def hold(self, digest: str, evidence: str) -> IngestionHold:
        entry = self.ingestions[digest]
        return IngestionHold(
            entry.raw_sha256, entry.raw_key, entry.ingested_at, dict(entry.members),
            digest in self.latest, evidence,
        )  # fmt: skip

    def models_of(self, digest: str) -> list[ModelHold]:
        """Models trained on features derived from an ingestion."""
        found = []
        for snapshot in self.derived.get(digest, []):
            for model in sorted(self.trained.get(snapshot.sha256, ())):
                versions = sorted(self.versions.get(model, ()), key=_version_order)
                found.append(ModelHold(model, snapshot.sha256, tuple(versions), digest))
        return found

    def locate(self, subject_hash: str) -> Located:
        from secure_pipeline.privacy.subjects import check_subject_hash, scan_subject

        check_subject_hash(subject_hash)
        located = Located(subject_hash, problems=list(self.problems))
        hits = scan_subject(self.store, self.pipeline.name, subject_hash)
        shard = subject_hash[0]
        for digest, entry in sorted(self.ingestions.items(), key=lambda i: i[1].seq):
            evidence = entry.index_problem
            hit = hits.get(digest)
            if evidence is None:
                signed = {str(i.get("shards", {}).get(shard)) for i in entry.signed_index}
                if hit is None:
                    evidence = f"its subject index shard {shard} is missing"
                elif hit.sha256 not in signed:
                    evidence = (
                        f"its subject index shard {shard} is not the one its signed ingestion "
                        "record names"
                    )
                elif hit.malformed:
                    evidence = f"its subject index shard {shard} is malformed"
                elif hit.holds:
                    evidence = "subject index"
                else:
                    continue
            else:
                evidence += ": taken to hold every subject"
            located.ingestions.append(self.hold(digest, evidence))
            located.derived.extend(self.derived.get(digest, []))
            located.models.extend(self.models_of(digest))
        return located


def _signed_index(details: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The subject index an ``ingestion.stored`` record names (catalogue and shard digests)."""
    index = details.get("subject_index")
    if isinstance(index, Mapping) and isinstance(index.get("shards"), Mapping):
        return index
    return None


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _require_identifiers(pipeline: PipelineSpec) -> None:
    if not pipeline.schema.identifier_columns:
        raise ConfigurationError(
            f"pipeline {pipeline.name!r} has no identifier column: erasure finds a data subject "
            "by the value of an 'identifier'-role column. Mark the column that names a person "
            "(a customer or case id) with role='identifier'; the ingestions after that are "
            "indexed."
        )


def hash_identifiers(pipeline: PipelineSpec, identifiers: Iterable[str]) -> list[str]:
    """The subject hashes of identifiers, in order, without repeats.

    Raises:
        ValueError: When there is none, or one is empty.
    """
    from secure_pipeline.privacy.subjects import subject_hash, subject_key

    key = subject_key(pipeline.name)
    hashes = list(dict.fromkeys(subject_hash(key, i) for i in identifiers))
    if not hashes:
        raise ValueError("no identifier given: name at least one data subject to erase")
    return hashes


def locate(
    store: SnapshotStore, pipeline: PipelineSpec, trust: TrustPolicy, subject_hash: str
) -> Located:
    """Every ingestion, derived snapshot and model holding one subject.

    Args:
        store: The snapshot store.
        pipeline: The pipeline.
        trust: The trust policy (the audit trail and index are read verified).
        subject_hash: The subject (`hash_identifiers`).

    Raises:
        AuditChainError: When the audit trail does not verify (what was ingested is unknown).
        ConfigurationError: When the pipeline has no identifier column.
    """
    _require_identifiers(pipeline)
    return _Inventory(store, pipeline, trust).locate(subject_hash)


def ingestion_snapshots(
    store: SnapshotStore, pipeline: PipelineSpec, trust: TrustPolicy
) -> dict[str, list[str]]:
    """Every recorded ingestion (raw index digest) -> its raw files and derived snapshots.

    What erasure and retention act on, oldest ingestion first.
    """
    inventory = _Inventory(store, pipeline, trust)
    ordered = sorted(inventory.ingestions.values(), key=lambda i: i.seq)
    return {
        i.raw_sha256: list(i.members.values()) + [d.key for d in inventory.derived[i.raw_sha256]]
        for i in ordered
    }


# -- shredding and receipts ----------------------------------------------------------------


def _parts(base: Mapping[str, Any], lists: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Split ``lists`` over as many details documents as keep each under the audit limit."""
    from secure_pipeline.canonical import canonical_json

    room = _DETAILS_BUDGET - len(canonical_json(dict(base)))
    parts: list[dict[str, list[Any]]] = [{name: [] for name in lists}]
    used = 0
    for name, items in lists.items():
        for item in items:
            size = len(canonical_json(item)) + 1
            if used + size > room and any(parts[-1].values()):
                parts.append({n: [] for n in lists})
                used = 0
            parts[-1][name].append(item)
            used += size
    if len(parts) == 1:
        return [{**base, **parts[0]}]
    return [{**base, **part, "part": i + 1, "parts": len(parts)} for i, part in enumerate(parts)]


def _append(
    audit: AuditLog,
    event: str,
    *,
    signer: "IdentitySigner",
    actor: str,
    base: Mapping[str, Any],
    lists: Mapping[str, Sequence[Any]],
) -> list[AuditRecord]:
    return [
        audit.append(event, signer=signer, actor=actor, details=details)
        for details in _parts(base, lists)
    ]


@dataclass
class _ShredBatch:
    shredded: list[str] = field(default_factory=list)
    key_ids: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    plaintext: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _shred(
    store: SnapshotStore,
    audit: AuditLog,
    keys: Sequence[str],
    *,
    pipeline: str,
    ingestion: str,
    reason: str,
    subjects: Sequence[str],
    signer: "IdentitySigner",
    actor: str,
) -> tuple[_ShredBatch, list[AuditRecord]]:
    """Shred the snapshots of one ingestion and receipt what this call destroyed.

    The receipt is written even when a shred fails part way (the error is raised after it):
    a destroyed key is always on record.
    """
    batch = _ShredBatch()
    failure: BaseException | None = None
    for key in keys:
        if not store.exists(key):
            batch.missing.append(key)
            continue
        try:
            if store.encryption_info(key) is None:
                batch.plaintext.append(key)
                continue
            result = store.shred(key, reason=f"{reason} ({pipeline})")
        except IntegrityError as exc:  # KeyUnavailableError too: the keyring cannot shred it
            failure = exc
            break
        if result.already_shredded:
            batch.already.append(key)
        else:
            batch.shredded.append(key)
            batch.key_ids.append(result.key_id)
    records: list[AuditRecord] = []
    if batch.shredded:
        records = _append(
            audit, "privacy.shredded", signer=signer, actor=actor,
            base={"pipeline": pipeline, "reason": reason, "ingestion": ingestion,
                  "shredded_at": utc_now(),
                  "provider": getattr(store.keyring, "provider", None)},
            lists={"snapshots": batch.shredded, "key_ids": batch.key_ids,
                   "subjects": list(subjects)},
        )  # fmt: skip
    if failure is not None:
        raise failure
    return batch, records


def _flag(
    store: SnapshotStore,
    trust: TrustPolicy,
    pipeline: PipelineSpec,
    model: str,
    *,
    versions: Iterable[str],
    reason: str,
    subjects: Sequence[str],
    snapshots: Sequence[str],
    signer: "IdentitySigner",
) -> list[str]:
    """Flag a model unless its valid flags already say as much; returns the new flag keys."""
    from secure_pipeline.privacy.flags import covers, erased_data_flags, flag_model

    existing = erased_data_flags(store, trust, pipeline.name, model)
    if covers(existing, reason=reason, subjects=subjects, snapshots=snapshots):
        return []
    known = {s for f in existing if f.predicate.get("reason") == reason
             for s in f.predicate.get("subjects", [])}  # fmt: skip
    fresh = [s for s in subjects if s not in known]
    chunks = [fresh[i : i + _FLAG_SUBJECTS] for i in range(0, len(fresh), _FLAG_SUBJECTS)]
    return [
        flag_model(
            store, pipeline.name, model, versions=sorted(set(versions)), reason=reason,
            subjects=chunk, snapshots=snapshots, signer=signer,
        )
        for chunk in chunks or [[]]
    ]  # fmt: skip


def _deletion_window(store: SnapshotStore, pipeline: PipelineSpec) -> None:
    """Shred KMS keys with the pipeline's waiting period (the store is shared by pipelines)."""
    keyring = store.keyring
    if keyring is not None and hasattr(keyring, "deletion_window_days"):
        keyring.deletion_window_days = pipeline.privacy.key_deletion_window_days


def _check_signer(signer: "IdentitySigner") -> None:
    if signer.identity != PRIVACY:
        raise PermissionError(
            f"erasure and retention are done by the {PRIVACY} identity; {signer.identity} may "
            "not destroy data keys or write their receipts"
        )


KEEP, WAIT = "keep", "wait"


def _plan(
    inventory: _Inventory, digest: str, verdict: Callable[[str], str | None]
) -> tuple[list[str], list[str], list[str]]:
    """Which snapshots of an ingestion to shred now, which must wait, which stay.

    A raw file unchanged since an earlier ingestion is one snapshot in both: ``verdict`` says,
    for each other ingestion sharing a file, whether that file must be kept (``keep``: the other
    ingestion holds none of what is erased, so neither does the file), must wait (``wait``), or
    may go (None). Derived snapshots belong to this ingestion alone.

    Returns:
        ``(shred, wait, keep)``: lists of store keys.
    """
    shred: list[str] = []
    wait: list[str] = []
    keep: list[str] = []
    for key in inventory.ingestions[digest].members.values():
        verdicts = {verdict(o) for o in inventory.member_of.get(key, set()) - {digest}}
        (keep if KEEP in verdicts else wait if WAIT in verdicts else shred).append(key)
    shred += [d.key for d in inventory.derived.get(digest, [])]
    return list(dict.fromkeys(shred)), wait, keep


def _is_shredded(store: SnapshotStore, key: str) -> bool:
    try:
        return store.shredded(key)
    except IntegrityError:
        return False


def _subjects_by_ingestion(located: Iterable[Located]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for loc in located:
        for hold in loc.ingestions:
            found.setdefault(hold.raw_sha256, []).append(loc.subject_hash)
    return found


def _models(located: Iterable[Located]) -> dict[str, tuple[set[str], list[str], list[str]]]:
    """Model digest -> (versions, subject hashes, snapshot keys) over every located subject."""
    found: dict[str, tuple[set[str], list[str], list[str]]] = {}
    for loc in located:
        for model in loc.models:
            versions, subjects, snapshots = found.setdefault(model.model_sha256, (set(), [], []))
            versions.update(model.versions)
            if loc.subject_hash not in subjects:
                subjects.append(loc.subject_hash)
            for key in loc.snapshot_keys(model.ingestion):
                if key not in snapshots:
                    snapshots.append(key)
    return found


@dataclass
class _Outcome:
    """Shreds done (and left) by one pass over ingestions."""

    shredded: list[tuple[str, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    plaintext: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    records: list[int] = field(default_factory=list)


def _erasure_pass(
    store: SnapshotStore,
    inventory: _Inventory,
    located: Sequence[Located],
    *,
    now: bool,
    signer: "IdentitySigner",
    actor: str,
) -> _Outcome:
    """Shred what holds the located subjects, except what must wait for a newer ingestion."""
    outcome = _Outcome()
    audit = AuditLog(store)
    holding = _subjects_by_ingestion(located)
    latest = inventory.latest
    for digest, subjects in holding.items():
        erased = set(subjects)

        def verdict(other: str, erased: set[str] = erased) -> str | None:
            if not erased & set(holding.get(other, ())):
                return KEEP
            return WAIT if other in latest and not now else None

        shred, wait, _keep = _plan(inventory, digest, verdict)
        if digest in latest and not now:
            shred, wait = [], shred + wait
        outcome.pending += [k for k in wait if not _is_shredded(store, k)]
        if not shred:
            continue
        batch, records = _shred(
            store, audit, shred, pipeline=inventory.pipeline.name, ingestion=digest,
            reason=ERASURE, subjects=subjects, signer=signer, actor=actor,
        )  # fmt: skip
        outcome.shredded += [(k, ERASURE) for k in batch.shredded]
        outcome.plaintext += batch.plaintext
        outcome.missing += batch.missing
        outcome.records += [r.seq for r in records]
    outcome.pending = list(dict.fromkeys(outcome.pending))
    return outcome


def _flag_located(
    store: SnapshotStore,
    trust: TrustPolicy,
    pipeline: PipelineSpec,
    located: Sequence[Located],
    signer: "IdentitySigner",
) -> list["FlaggedModel"]:
    flagged = []
    for model, (versions, subjects, snapshots) in _models(located).items():
        keys = _flag(store, trust, pipeline, model, versions=versions, reason=ERASURE,
                     subjects=subjects, snapshots=snapshots, signer=signer)  # fmt: skip
        if keys:
            flagged.append(FlaggedModel(model, sorted(versions, key=_version_order), ERASURE, keys))
    return flagged


# -- erase -----------------------------------------------------------------------------------


@dataclass
class FlaggedModel:
    """A model flagged by this call.

    Attributes:
        model_sha256: The model.
        versions: Its registered versions.
        reason: ``erasure`` or ``retention``.
        flags: Store keys of the new flags.
    """

    model_sha256: str
    versions: list[str]
    reason: str
    flags: list[str]


@dataclass
class Receipt:
    """What one erasure request did.

    Attributes:
        pipeline: The pipeline.
        request: The request's id (in its audit receipt).
        requested_at: When.
        subjects: Hashes of the identifiers named (never the identifiers).
        new_subjects: Those not on the erasure list before.
        entries: Store keys of the erasure list entries written.
        located: What held each subject.
        models: Every model trained on their data (flagged now or before).
        flagged: Models flagged by this call.
        shredded: Snapshots whose keys this call destroyed.
        pending: Snapshots that wait for a newer ingestion (`enforce`, or ``now``).
        plaintext: Snapshots holding a subject that are not encrypted and so cannot be
            crypto-shredded: they must be deleted by other means.
        missing: Snapshots named by an ingestion or manifest that are not in the store.
        audit_records: Sequence numbers of the audit records written.
    """

    pipeline: str
    request: str
    requested_at: str
    subjects: list[str]
    new_subjects: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    located: list[Located] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    flagged: list[FlaggedModel] = field(default_factory=list)
    shredded: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    plaintext: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    audit_records: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every snapshot holding the subjects is unreadable now."""
        return not (self.pending or self.plaintext)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (hashes only)."""
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("located", "flagged")},
            "located": [loc.to_dict() for loc in self.located],
            "flagged": [asdict(f) for f in self.flagged],
            "complete": self.complete,
        }


def erase(
    store: SnapshotStore,
    pipeline: PipelineSpec,
    trust: TrustPolicy,
    identifiers: Sequence[str],
    *,
    now: bool,
    signer: "IdentitySigner",
    reason: str = DEFAULT_REASON,
    actor: str = "secure-pipeline privacy erase",
) -> Receipt:
    """Erase data subjects: list them for exclusion, flag their models, shred their snapshots.

    Args:
        store: The snapshot store (with the keyring that wrote its encrypted snapshots).
        pipeline: The pipeline.
        trust: The trust policy.
        identifiers: The subjects' identifiers, as written in the identifier column; they are
            hashed at once and never stored, logged or returned.
        now: Shred the latest ingestion's snapshots too, without waiting for a newer
            ingestion (the pipeline's current data becomes unreadable until it is ingested
            again).
        signer: The privacy identity's signer.
        reason: Why (a request reference; no personal data), recorded in the erasure entry.
        actor: Who acted, for the audit trail.

    Returns:
        The receipt.

    Raises:
        ConfigurationError: When the pipeline has no identifier column.
        ValueError: For no identifier, or an empty one.
        PermissionError: When the signer is not the privacy identity.
        AuditChainError: When the audit trail does not verify: nothing is done.
        SignatureError: When an entry of the erasure list does not verify: nothing is done.
        KeyUnavailableError: When the store's keyring cannot shred a snapshot's key (what was
            shredded before is receipted).
    """
    _deletion_window(store, pipeline)
    from secure_pipeline.privacy.subjects import (
        MAX_SUBJECTS_PER_ENTRY,
        erased_subjects,
        write_erasure_entry,
    )

    _check_signer(signer)
    _require_identifiers(pipeline)
    hashes = hash_identifiers(pipeline, identifiers)
    requested_at = utc_now()
    receipt = Receipt(pipeline.name, secrets.token_hex(16), requested_at, hashes)
    # Both read (and verified) before anything is written.
    inventory = _Inventory(store, pipeline, trust)
    listed = erased_subjects(store, pipeline.name, trust)
    receipt.new_subjects = [h for h in hashes if h not in listed]
    for start in range(0, len(receipt.new_subjects), MAX_SUBJECTS_PER_ENTRY):
        receipt.entries.append(
            write_erasure_entry(
                store, pipeline.name, receipt.new_subjects[start : start + MAX_SUBJECTS_PER_ENTRY],
                requested_at=requested_at, reason=reason, signer=signer,
            )
        )  # fmt: skip
    receipt.located = [inventory.locate(h) for h in hashes]
    receipt.models = [
        {"sha256": model, "versions": sorted(versions, key=_version_order)}
        for model, (versions, _s, _k) in _models(receipt.located).items()
    ]
    # Flags first: from the moment of the request, a model trained on the data is refused.
    receipt.flagged = _flag_located(store, trust, pipeline, receipt.located, signer)
    if receipt.new_subjects or receipt.flagged:
        snapshots = sorted({k for loc in receipt.located for k in loc.snapshot_keys()})
        records = _append(
            AuditLog(store), "privacy.erasure", signer=signer, actor=actor,
            base={"pipeline": pipeline.name, "request": receipt.request,
                  "requested_at": requested_at, "now": now,
                  "entries": [e.rsplit("/", 1)[-1].removesuffix(".json") for e in receipt.entries],
                  "subjects_count": len(receipt.new_subjects or hashes),
                  "snapshots_count": len(snapshots)},
            lists={"subjects": receipt.new_subjects or hashes, "snapshots": snapshots,
                   "models": receipt.models},
        )  # fmt: skip
        receipt.audit_records += [r.seq for r in records]
    outcome = _erasure_pass(store, inventory, receipt.located, now=now, signer=signer, actor=actor)
    receipt.shredded = [k for k, _ in outcome.shredded]
    receipt.pending = outcome.pending
    receipt.plaintext = outcome.plaintext
    receipt.missing = outcome.missing
    receipt.audit_records += outcome.records
    return receipt


# -- enforce ---------------------------------------------------------------------------------


@dataclass
class EnforceReport:
    """What one run of `enforce` did.

    Attributes:
        pipeline: The pipeline.
        today: The date retention was judged on.
        erased_subjects: Subjects on the erasure list.
        shredded: ``{key, reason}`` of each snapshot whose key this run destroyed.
        pending: Snapshots that still wait for a newer ingestion than the latest.
        spared: Expired snapshots kept: the champion was trained on them, or a newer
            ingestion within its retention holds the same file.
        flagged: Models flagged by this run.
        plaintext: Snapshots to erase that are not encrypted (cannot be crypto-shredded).
        missing: Snapshots named by an ingestion or manifest that are not in the store.
        problems: What stopped part of the work (retention is not applied when what to
            spare is unknown); a run with problems should be looked at.
        audit_records: Sequence numbers of the receipts written.
    """

    pipeline: str
    today: str
    erased_subjects: int = 0
    shredded: list[dict[str, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    spared: list[str] = field(default_factory=list)
    flagged: list[FlaggedModel] = field(default_factory=list)
    plaintext: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    audit_records: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "flagged": [asdict(f) for f in self.flagged]}


def enforce(
    store: SnapshotStore,
    pipeline: PipelineSpec,
    trust: TrustPolicy,
    *,
    today: date | datetime,
    signer: "IdentitySigner",
    actor: str = "secure-pipeline privacy enforce",
) -> EnforceReport:
    """Complete pending erasures and apply retention; idempotent.

    Erasures: every subject on the (verified) erasure list is located again; the snapshots of
    the ingestions holding it that are no longer the latest are shredded (a newer ingestion,
    which excluded it, exists), and models trained on them are flagged if they are not yet.
    Retention: the raw files and derived snapshots of ingestions past the source's
    ``retention_days`` are shredded, and the models trained on them flagged; the champion's
    lineage is spared unless ``privacy.retention_overrides_champion`` (then it is shredded too
    and the champion flagged), and so is a raw file a newer ingestion still within its
    retention received again. Nothing already shredded, flagged or receipted is done again.

    Args:
        store: The snapshot store.
        pipeline: The pipeline.
        trust: The trust policy.
        today: The date retention is judged on (a datetime is taken in UTC).
        signer: The privacy identity's signer.
        actor: Who acted, for the audit trail.

    Returns:
        The report; `EnforceReport.problems` lists what could not be done.

    Raises:
        PermissionError: When the signer is not the privacy identity.
        AuditChainError: When the audit trail does not verify: nothing is done.
        SignatureError: When an entry of the erasure list does not verify: nothing is done.
    """
    _deletion_window(store, pipeline)
    from secure_pipeline.privacy.retention import as_date

    _check_signer(signer)
    day = as_date(today)
    report = EnforceReport(pipeline.name, day.isoformat())
    if not pipeline.holds_personal_data:
        return report
    inventory = _Inventory(store, pipeline, trust)
    if pipeline.schema.identifier_columns:
        from secure_pipeline.privacy.subjects import erased_subjects

        listed = erased_subjects(store, pipeline.name, trust)
        # An erasure the audit trail records but the list no longer holds was removed from the
        # store: put it back (signed again), so the next ingestion still excludes the subject.
        lost = sorted(inventory.requested - listed)
        if lost:
            from secure_pipeline.privacy.subjects import MAX_SUBJECTS_PER_ENTRY, write_erasure_entry

            for start in range(0, len(lost), MAX_SUBJECTS_PER_ENTRY):
                write_erasure_entry(
                    store, pipeline.name, lost[start : start + MAX_SUBJECTS_PER_ENTRY],
                    requested_at=utc_now(), reason="restored from the audit trail",
                    signer=signer,
                )  # fmt: skip
            report.problems.append(
                f"{len(lost)} erased subject(s) recorded in the audit trail were missing from the "
                "erasure list (an entry was deleted from the store); their entries were signed "
                "again. Investigate who removed them"
            )
        hashes = sorted(listed | set(lost))
        report.erased_subjects = len(hashes)
        located = [inventory.locate(h) for h in hashes]
        report.flagged += _flag_located(store, trust, pipeline, located, signer)
        outcome = _erasure_pass(store, inventory, located, now=False, signer=signer, actor=actor)
        _merge(report, outcome)
    if pipeline.source.retention_days is not None:
        _apply_retention(store, pipeline, trust, inventory, report, day, signer, actor)
    return report


def _merge(report: EnforceReport, outcome: _Outcome) -> None:
    report.shredded += [{"key": k, "reason": r} for k, r in outcome.shredded]
    report.pending += outcome.pending
    report.spared += outcome.kept
    report.plaintext += outcome.plaintext
    report.missing += outcome.missing
    report.audit_records += outcome.records


def _apply_retention(
    store: SnapshotStore,
    pipeline: PipelineSpec,
    trust: TrustPolicy,
    inventory: _Inventory,
    report: EnforceReport,
    day: date,
    signer: "IdentitySigner",
    actor: str,
) -> None:
    from secure_pipeline.privacy.retention import champion_lineage, is_expired

    days = pipeline.source.retention_days
    assert days is not None
    expired = {d for d, i in inventory.ingestions.items() if is_expired(i.ingested_at, days, day)}
    if not expired:
        return
    try:
        champion = champion_lineage(pipeline, store, trust)
    except PolicyViolation as exc:
        report.problems.append(f"retention not applied: {exc}")
        return
    override = pipeline.privacy.retention_overrides_champion
    spared = frozenset() if champion is None or override else champion.raw_digests

    def verdict(other: str) -> str | None:
        return KEEP if other not in expired or other in spared else None

    outcome = _Outcome()
    audit = AuditLog(store)
    for digest in sorted(expired, key=lambda d: inventory.ingestions[d].seq):
        shred, _wait, keep = _plan(inventory, digest, verdict)
        if digest in spared:
            shred, keep = [], shred + keep
        outcome.kept += [k for k in keep if not _is_shredded(store, k)]
        if not shred:
            continue
        for model in inventory.models_of(digest):
            flagged = _flag(
                store, trust, pipeline, model.model_sha256, versions=model.versions,
                reason=RETENTION, subjects=[], snapshots=shred, signer=signer,
            )  # fmt: skip
            if flagged:
                report.flagged.append(
                    FlaggedModel(model.model_sha256, list(model.versions), RETENTION, flagged)
                )
        batch, records = _shred(
            store, audit, shred, pipeline=pipeline.name, ingestion=digest, reason=RETENTION,
            subjects=[], signer=signer, actor=actor,
        )  # fmt: skip
        outcome.shredded += [(k, RETENTION) for k in batch.shredded]
        outcome.plaintext += batch.plaintext
        outcome.missing += batch.missing
        outcome.records += [r.seq for r in records]
    _merge(report, outcome)
