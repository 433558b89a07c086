"""Retention (storage limitation, GDPR Art. 5(1)(e)): which ingestions are past their date.

``SourceSpec.retention_days`` says how long the raw files of a source, and the snapshots derived
from them, stay readable. An ingestion's age runs from the first signed ``ingestion.stored``
record of its raw index (the ingest identity's signed time, not a file anyone could rewrite);
it is past its date when more than ``retention_days`` whole days have gone by since then.

The current champion's lineage is spared (the served model stays verifiable and can be
retrained from the same data) unless ``PrivacySpec.retention_overrides_champion``; the
champion is found from signed evidence only: the gate's latest champion decision, the release
identity's registration of that version, and the lineage document it names (kept in the store
by digest), so it is found even when its snapshots can no longer be read.
"""

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from secure_pipeline.errors import IntegrityError, PolicyViolation
from secure_pipeline.features.window import lineage_snapshots
from secure_pipeline.names import REGISTERED_MODEL
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.snapshots import SnapshotStore, snapshot_key
from secure_pipeline.trust.policy import TrustPolicy


@dataclass(frozen=True)
class ChampionLineage:
    """The snapshots the current champion was trained from.

    Attributes:
        version: The champion's registered version.
        model_sha256: Its model digest.
        raw_sha256: Digest of its raw fileset index (the ingestion).
        validated_sha256: Digest of its validated snapshot.
        features_sha256: Digest of its feature table.
        keys: Store keys of those snapshots.
        raw_digests: Every raw fileset index it was trained from: ``raw_sha256``, or each day
            of a partitioned pipeline's window (the other digests are then the last day's).
        all_digests: Every data digest of the lineage, every day's.
    """

    version: str
    model_sha256: str
    raw_sha256: str
    validated_sha256: str
    features_sha256: str
    keys: tuple[str, ...]
    raw_digests: frozenset[str] = frozenset()
    all_digests: frozenset[str] = frozenset()

    @property
    def digests(self) -> frozenset[str]:
        """Every data digest of the lineage."""
        return frozenset(
            (self.raw_sha256, self.validated_sha256, self.features_sha256, *self.all_digests)
        )


def as_date(moment: date | datetime | str) -> date:
    """A calendar date (UTC) from a date, an aware or naive-UTC datetime, or ISO-8601 text."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if isinstance(moment, datetime):
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.date()
    return moment


def expiry_date(ingested_at: str, retention_days: int) -> date:
    """The first day on which an ingestion of ``ingested_at`` is past its retention."""
    return as_date(ingested_at) + timedelta(days=retention_days + 1)


def is_expired(ingested_at: str, retention_days: int, today: date | datetime) -> bool:
    """Whether more than ``retention_days`` whole days have passed since ``ingested_at``."""
    return as_date(today) >= expiry_date(ingested_at, retention_days)


def champion_lineage(
    pipeline: PipelineSpec, store: SnapshotStore, trust: TrustPolicy
) -> ChampionLineage | None:
    """The current champion's lineage, from signed evidence (None when there is no champion).

    Raises:
        PolicyViolation: When there is a champion decision but its registration or lineage
            document cannot be found or does not match it: what to spare is unknown, so
            nothing should be expired until that is resolved.
    """
    from secure_pipeline.registry.decisions import champion, decisions
    from secure_pipeline.registry.registration import registrations

    name = pipeline.names.model_name
    current = champion(decisions(store, trust, name)[0])
    if current is None:
        return None
    found, _rejected = registrations(store, trust, name, current.version)
    registration = next(
        (
            r
            for r in found
            if r.subjects.get("bundle") == current.bundle_digest
            and r.subjects.get("model.skops") == current.model_sha256
        ),
        None,
    )
    where = f"champion version {current.version} of {name}"
    if registration is None:
        raise PolicyViolation(
            f"{where} has no signed registration of its bundle in the store, so the snapshots "
            "it was trained from are unknown; nothing is expired until it is found (check "
            "attestations/registrations/ and the audit trail)"
        )
    lineage_sha = str(registration.predicate.get("lineage_sha256"))
    key = snapshot_key([pipeline.name, REGISTERED_MODEL, "_lineage"], lineage_sha, "json")
    try:
        lineage: dict[str, Any] = json.loads(store.read_bytes((key, lineage_sha)))
        snapshots = [
            (stage, (str(entry["key"]), str(entry["sha256"])))
            for stage, _day, entry in lineage_snapshots(lineage)
        ]
        # The last day's of each stage (the only one, unpartitioned); every day's below.
        stages = {stage: ref for stage, ref in snapshots}
        missing = {"raw", "validated", "features"} - set(stages)
        if missing:
            raise KeyError(f"no {' or '.join(sorted(missing))} snapshot")
        model_sha = str(lineage["model"]["sha256"])
    except (IntegrityError, ValueError, KeyError, TypeError) as exc:
        raise PolicyViolation(
            f"the lineage document of {where} ({key}) cannot be read as the registration "
            f"names it ({exc}); nothing is expired until it is restored"
        ) from None
    if model_sha != current.model_sha256:
        raise PolicyViolation(
            f"the lineage document of {where} is about model {model_sha[:12]}, not the "
            f"champion's {str(current.model_sha256)[:12]}; nothing is expired"
        )
    return ChampionLineage(
        version=current.version,
        model_sha256=model_sha,
        raw_sha256=stages["raw"][1],
        validated_sha256=stages["validated"][1],
        features_sha256=stages["features"][1],
        keys=tuple(dict.fromkeys(k for _stage, (k, _sha) in snapshots)),
        raw_digests=frozenset(sha for stage, (_k, sha) in snapshots if stage == "raw"),
        all_digests=frozenset(sha for _stage, (_k, sha) in snapshots),
    )
