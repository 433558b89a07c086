"""Provenance records: what was ingested, from where, when, by which run.

One record per ingested file, kept together in an immutable JSON snapshot per ingestion and
shown as asset metadata. URIs are redacted: credentials never reach a record.
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from secure_pipeline.redaction import redact_uri
from secure_pipeline.storage.snapshots import canonical_json, utc_now

PROVENANCE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ProvenanceRecord:
    """Facts about one ingested file.

    Attributes:
        member: The file's member name in the source.
        uri: Where it came from (redacted).
        connector: The connector that fetched it.
        retrieved_at: UTC time the fetch started.
        size: Bytes stored.
        sha256: Digest of the bytes stored.
        run_id: The Dagster run.
        schema_version: Version of the schema the file is expected to conform to.
        facts: Connector-specific facts (resolved path; TLS details, ETag for other connectors).
    """

    member: str
    uri: str
    connector: str
    retrieved_at: str
    size: int
    sha256: str
    run_id: str | None
    schema_version: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON metadata."""
        return asdict(self)


def provenance_document(
    asset: str, location: str, index_sha256: str, records: Sequence[ProvenanceRecord]
) -> bytes:
    """The canonical JSON document stored for one ingestion.

    Args:
        asset: The raw asset's name.
        location: The source location (redacted here).
        index_sha256: Digest of the fileset index the ingestion produced.
        records: One record per file.
    """
    return canonical_json(
        {
            "schema_version": PROVENANCE_SCHEMA_VERSION,
            "asset": asset,
            "source": redact_uri(location),
            "fileset_sha256": index_sha256,
            "recorded_at": utc_now(),
            "files": [r.to_dict() for r in records],
        }
    )
