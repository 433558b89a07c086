"""Provenance records: what was ingested, from where, when, by which run.

One record per ingested file, kept together in an immutable JSON snapshot per ingestion and
shown as asset metadata. URIs are redacted: credentials never reach a record.
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
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
        facts: Connector-specific facts (resolved path; TLS details, ETag for other connectors),
            and, for a schema with identifier columns, ``received_sha256``,
            ``received_bytes`` and ``excluded_rows`` (records of erased subjects dropped
            before the bytes were stored).
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


REQUIRED_FIELDS = ("member", "uri", "connector", "retrieved_at", "size", "sha256", "run_id")
CONNECTOR_FACTS = {
    "https": ("tls_version", "cipher", "peer_cert_sha256", "final_url"),
    "s3": ("bucket", "key", "etag", "version_id"),
    "file": ("path",),
}


def _received_problems(
    member: str, record: Mapping[str, Any], facts: Mapping[str, Any]
) -> list[str]:
    """What is inconsistent between what a filtered file received and what it stored.

    Records of erased subjects are dropped at entry: ``received_*`` describe the bytes that
    arrived, ``sha256``/``size`` the bytes stored; with nothing dropped the two are the same.
    """
    excluded, received = facts.get("excluded_rows"), facts.get("received_bytes")
    digest = facts.get("received_sha256")
    if not (
        isinstance(excluded, int)
        and excluded >= 0
        and isinstance(received, int)
        and isinstance(digest, str)
        and len(digest) == 64
    ):
        return [
            f"file {member!r}: facts.excluded_rows, received_bytes and received_sha256 must be "
            "a count, a size and a SHA-256"
        ]
    if excluded == 0 and (digest != record.get("sha256") or received != record.get("size")):
        return [
            f"file {member!r}: no rows were excluded, yet {received} bytes (sha256 {digest}) "
            f"were received and {record.get('size')} stored"
        ]
    if excluded > 0 and not received > (record.get("size") or 0):
        return [
            f"file {member!r}: {excluded} rows were excluded, yet the {received} bytes received "
            f"are no more than the {record.get('size')} stored"
        ]
    return []


def provenance_problems(
    document: Mapping[str, Any],
    index: Mapping[str, Any],
    *,
    index_sha256: str,
    run_id: str,
    schema_version: str,
) -> list[str]:
    """Everything missing or inconsistent in an ingestion's provenance record.

    Args:
        document: The stored provenance document.
        index: The fileset index the ingestion produced.
        index_sha256: The index's digest (the raw asset's data version).
        run_id: The run that materialized the raw asset.
        schema_version: The schema version the pipeline declares now.

    Returns:
        One line per problem; empty when the record is complete.
    """
    problems: list[str] = []
    if document.get("fileset_sha256") != index_sha256:
        problems.append(
            f"the record describes fileset {document.get('fileset_sha256')}, not the stored "
            f"{index_sha256}"
        )
    records = {r.get("member"): r for r in document.get("files", [])}
    for member, stored in index.get("files", {}).items():
        record = records.get(member)
        if record is None:
            problems.append(f"file {member!r}: no provenance record")
            continue
        missing = [f for f in REQUIRED_FIELDS if record.get(f) in (None, "")]
        if record.get("schema_version") in (None, ""):
            missing.append("schema_version")
        connector = record.get("connector")
        facts = record.get("facts") or {}
        missing += [f"facts.{f}" for f in CONNECTOR_FACTS.get(connector, ()) if not facts.get(f)]
        if connector not in CONNECTOR_FACTS:
            problems.append(f"file {member!r}: unknown connector {connector!r}")
        if missing:
            hint = " (is the landing bucket versioned?)" if "facts.version_id" in missing else ""
            problems.append(f"file {member!r}: missing {', '.join(missing)}{hint}")
        if record.get("sha256") != stored.get("sha256") or record.get("size") != stored.get("size"):
            problems.append(
                f"file {member!r}: recorded sha256 {record.get('sha256')} / {record.get('size')} "
                f"bytes, stored {stored.get('sha256')} / {stored.get('size')} bytes"
            )
        if "excluded_rows" in facts:
            problems += _received_problems(member, record, facts)
        if record.get("run_id") not in (None, run_id):
            problems.append(
                f"file {member!r}: recorded run {record.get('run_id')}, materialized by {run_id}"
            )
        if connector == "https" and facts.get("tls_version") not in (None, "TLSv1.3"):
            problems.append(
                f"file {member!r}: fetched over {facts.get('tls_version')}; TLS 1.3 is required"
            )
        if record.get("schema_version") not in (None, "", schema_version):
            problems.append(
                f"file {member!r}: ingested for schema {record.get('schema_version')}, but the "
                f"pipeline now declares {schema_version}; re-materialize the raw asset"
            )
        try:
            datetime.fromisoformat(str(record.get("retrieved_at")).replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"file {member!r}: retrieved_at is not an ISO-8601 time")
    for member in records.keys() - index.get("files", {}).keys():
        problems.append(f"provenance names file {member!r}, which the fileset does not hold")
    return problems
