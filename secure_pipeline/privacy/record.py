"""The record of processing activities (GDPR Art. 30(1)) of a pipeline, from what is in force.

Nothing here is typed in twice: the descriptive fields come from the pipeline's
`secure_pipeline.spec.PrivacySpec`, the categories of personal data from the column roles, the
retention from the source, the recipients from the stage identities of the trust policy and the
spec, the security measures from the controls the spec and the environment switch on, and the
erasures done from the verified audit trail (counts, times and hashed identifiers only). A field
the spec leaves empty is listed under ``missing``, so an incomplete record says so.

``secure-pipeline privacy record --format json|md`` prints it.
"""

from collections.abc import Mapping
from typing import Any

from secure_pipeline import environment as env
from secure_pipeline.names import REQUIRED_CHECKS
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.snapshots import SnapshotStore, utc_now
from secure_pipeline.trust.identities import (
    GATE,
    INGEST,
    MONITOR,
    PRIVACY,
    RELEASE,
    SERVE,
    STAGE_IDENTITIES,
    TRAIN,
)
from secure_pipeline.trust.policy import TrustPolicy

RECORD_TITLE = "Record of processing activities (GDPR Art. 30(1))"

# What each stage identity does with the data: the pipeline's own recipients (Art. 30(1)(d)).
_IDENTITY_ROLES: Mapping[str, str] = {
    INGEST: (
        "receives the source files, stores them encrypted, validates the rows, drops personal "
        "and ignored columns, pseudonymises the ones kept, derives the features and judges "
        "the data checks"
    ),
    TRAIN: "reads the feature table to train the model and judges the model's security checks",
    RELEASE: "signs the model bundle (digests and aggregate metrics, no rows) and registers it",
    GATE: "decides promotion and canary releases from signed evidence; reads no rows",
    MONITOR: (
        "records failed runs in the audit trail; reads the recorded live traffic (model "
        "inputs and scores, no identifying or personal columns) to judge the live checks"
    ),
    PRIVACY: (
        "records erasure requests (hashed identifiers), destroys the data keys of erased and "
        "expired snapshots, flags models trained on them"
    ),
    SERVE: (
        "scores the callers' rows; records a sample of the model's inputs, sensitive columns "
        "and scores (never identifying or personal columns) in signed batches"
    ),
}


def _column_entry(pipeline: PipelineSpec, column: Any) -> dict[str, Any]:
    """One column: its role, what it means, where its values go, and whether it is personal."""
    sensitive = column.role == "sensitive" or column.name in pipeline.sensitive_features
    personal = column.role in ("identifier", "personal")
    pseudonymised = column.role == "personal" and column.pseudonymise
    if column.role == "ignore":
        stored = "dropped at entry (raw files only)"
    elif column.role == "personal":
        stored = (
            "raw files; later only as a keyed pseudonym (HMAC-SHA256)"
            if pseudonymised
            else "raw files only: dropped before the validated table"
        )
    elif column.role == "identifier":
        stored = "raw files and validated rows (for joins and erasure); never a model input"
    else:
        stored = "raw files, validated rows and features"
    return {
        "name": column.name,
        "role": column.role,
        "type": column.dtype,
        "description": column.description,
        "personal": personal,
        "identifier": column.role == "identifier",
        "sensitive": sensitive,
        "pseudonymised": pseudonymised,
        "stored": stored,
    }


def _recipients(pipeline: PipelineSpec, trust: TrustPolicy) -> list[dict[str, Any]]:
    recipients: list[dict[str, Any]] = []
    for identity in STAGE_IDENTITIES:
        keys = [k.keyid[:16] for k in trust.keys_for(identity)]
        recipients.append(
            {
                "recipient": f"{identity} stage of the pipeline",
                "identity": identity,
                "keys": keys,
                "processing": _IDENTITY_ROLES.get(identity, ""),
            }
        )
    if trust.approvers:
        recipients.append(
            {
                "recipient": "approvers of the trust policy",
                "identity": "approver:*",
                "keys": [k.keyid[:16] for k in trust.approvers.values()],
                "processing": "approve model promotions from the model's evidence; read no rows",
            }
        )
    recipients.append(
        {
            "recipient": "callers of the model through the inference gateway",
            "identity": "client certificates of the gateway's client CA (mutual TLS, RBAC)",
            "keys": [],
            "processing": (
                "send inputs and receive predictions of the served model; they receive no "
                "stored data"
            ),
        }
    )
    for other in pipeline.privacy.recipients:
        recipients.append({"recipient": other, "identity": None, "keys": [], "processing": ""})
    return recipients


def _keyring_provider(store: SnapshotStore) -> str:
    keyring = getattr(store, "keyring", None)
    provider = getattr(keyring, "provider", None) or getattr(keyring, "name", None)
    if provider:
        return str(provider)
    from secure_pipeline.storage.keyrings import KEYRING_VAR

    configured = env.read(KEYRING_VAR)
    if configured:
        return configured.strip().lower()
    return "kms" if env.current_environment() is env.Environment.PRODUCTION else "local"


def _security_measures(
    pipeline: PipelineSpec, store: SnapshotStore, trust: TrustPolicy
) -> list[str]:
    schema = pipeline.schema
    source = pipeline.source
    measures: list[str] = []
    scheme = source.location.split(":", 1)[0].lower()
    transport = {
        "https": "over TLS 1.3 only, with a verified server certificate"
        + (f" pinned to {len(source.tls_pins)} fingerprint(s)" if source.tls_pins else ""),
        "s3": "from S3 over TLS (the object's version and ETag recorded)",
        "file": "from a local directory (no network transfer)",
    }.get(scheme, f"over {scheme}")
    measures.append(
        f"Ingestion: source files are received {transport}; https sources are accepted over "
        "TLS 1.3 only; files over the size limit are refused before anything is stored."
    )
    if pipeline.holds_personal_data:
        provider = _keyring_provider(store)
        how = (
            "a KMS key created for each snapshot (AWS KMS)"
            if provider == "kms"
            else "a key-encryption key kept outside the store (local keyring)"
        )
        measures.append(
            "Encryption at rest: raw files, validated rows, the quarantine and the feature "
            "table are envelope-encrypted (AES-256-GCM, a fresh data key per snapshot wrapped "
            f"by {how}; keyring provider {provider!r}). Erasure and retention destroy that key "
            "(crypto-shredding), so the immutable bytes can never be read again"
            + (
                f"; KMS keys are unusable at once and deleted after "
                f"{pipeline.privacy.key_deletion_window_days} days."
                if provider == "kms"
                else "."
            )
        )
    dropped = [c.name for c in schema.columns if c.role == "personal" and not c.pseudonymise]
    pseudonymised = [c.name for c in schema.columns if c.role == "personal" and c.pseudonymise]
    if dropped:
        measures.append(
            f"Minimisation: personal columns {', '.join(dropped)} are checked while parsing and "
            "dropped before the validated table."
        )
    if pseudonymised:
        measures.append(
            f"Pseudonymisation: {', '.join(pseudonymised)} are kept only as HMAC-SHA256 "
            "pseudonyms under the pipeline's pseudonymisation key, which is held outside the "
            "store."
        )
    if schema.identifier_columns:
        names = ", ".join(c.name for c in schema.identifier_columns)
        measures.append(
            f"Subject index: identifiers ({names}) are indexed only as keyed hashes (HMAC with "
            "the pipeline's pseudonymisation key), so erasure can find a subject's snapshots "
            "and the next ingestion excludes erased subjects; identifiers are never model "
            "inputs and never reach the audit trail."
        )
    measures.append(
        "Immutable storage: every snapshot is content-addressed and create-only, re-hashed on "
        "every read (S3 versioning and Object Lock in production)."
    )
    measures.append(
        f"Signed evidence: every verdict, registration, approval, promotion, erasure and flag "
        f"is a DSSE attestation signed by its stage identity, checked against the "
        f"{trust.describe()}."
    )
    measures.append(
        "Audit trail: a signed, hash-chained, create-only log of every ingestion, verdict, "
        "promotion, erasure and key destruction, holding digests and counts, never row values."
    )
    checks = ", ".join(f"{name} ({stage})" for stage, names in REQUIRED_CHECKS.items()
                       for name in names)  # fmt: skip
    policy = pipeline.policy
    measures.append(
        f"Gates: a model is registered, promoted and served only with passing signed verdicts "
        f"of {checks}; membership-inference AUC at most {policy.max_membership_auc}; "
        f"{policy.approvals_required} signed approval(s) before promotion; models trained on "
        "erased or expired data are "
        + (
            "refused"
            if pipeline.privacy.erased_data_models == "refuse"
            else "allowed with a warning"
        )
        + " until retrained."
    )
    orchestration = pipeline.orchestration
    measures.append(
        "Isolation: each stage runs in its own Kubernetes namespace and service account with "
        f"only its own signing key (ingest {orchestration.ingest.namespace}, train "
        f"{orchestration.train.namespace}, release {orchestration.registry.namespace}, privacy "
        f"{orchestration.privacy.namespace})."
    )
    measures.append(
        "Serving: the model is reached only through a gateway speaking mutual TLS 1.3, with a "
        "role per route and a rate limit per caller identity; bodies are never logged."
    )
    return measures


def _erasures(pipeline: PipelineSpec, store: SnapshotStore, trust: TrustPolicy) -> dict[str, Any]:
    """Erasures and key destructions recorded in the verified audit trail (raises if broken)."""
    from secure_pipeline.storage.audit import AuditLog

    requests: dict[str, dict[str, Any]] = {}
    subjects: set[str] = set()
    shredded: dict[str, set[str]] = {"erasure": set(), "retention": set()}
    shred_times: list[str] = []
    for record in AuditLog(store).verified_records(trust):
        details = record.details
        if record.event not in ("privacy.erasure", "privacy.shredded"):
            continue
        if details.get("pipeline") != pipeline.name:
            continue
        if record.event == "privacy.erasure":
            request = str(details.get("request") or record.hash)
            entry = requests.setdefault(
                request, {"time": str(details.get("requested_at") or record.ts), "subjects": 0}
            )
            found = [str(s) for s in details.get("subjects", [])]
            entry["subjects"] += len(found)
            subjects.update(found)
        else:
            reason = str(details.get("reason"))
            shredded.setdefault(reason, set()).update(str(s) for s in details.get("snapshots", []))
            shred_times.append(str(details.get("shredded_at") or record.ts))
    times = sorted(r["time"] for r in requests.values())
    return {
        "requests": len(requests),
        "subjects": len(subjects),
        "times": times,
        "last": times[-1] if times else None,
        "snapshots_shredded": {k: len(v) for k, v in sorted(shredded.items())},
        "last_key_destroyed": max(shred_times) if shred_times else None,
        "source": "verified audit trail (privacy.erasure and privacy.shredded records)",
    }


def record_of_processing(
    pipeline: PipelineSpec, store: SnapshotStore, trust: TrustPolicy
) -> dict[str, Any]:
    """The Art. 30(1) record of a pipeline, as JSON-ready data.

    Args:
        pipeline: The pipeline spec.
        store: The snapshot store (its audit trail gives the erasures done).
        trust: The trust policy (the identities acting on the data, and the trail's keys).

    Returns:
        ``controller``, ``purpose``, ``legal_basis``, ``data_subjects``, ``personal_data``,
        ``recipients``, ``retention``, ``security_measures``, ``erasures`` and ``missing``.

    Raises:
        AuditChainError: When the audit trail does not verify: erasures done are only ever
            reported from a verified trail.
    """
    privacy = pipeline.privacy
    columns = [_column_entry(pipeline, c) for c in pipeline.schema.columns]
    days = pipeline.source.retention_days
    cron = privacy.enforce_cron
    record: dict[str, Any] = {
        "title": RECORD_TITLE,
        "pipeline": pipeline.name,
        "description": pipeline.description,
        "generated_at": utc_now(),
        "controller": privacy.controller,
        "purpose": privacy.purpose,
        "legal_basis": privacy.legal_basis,
        "data_subjects": list(privacy.data_subjects),
        "personal_data": {
            "holds_personal_data": pipeline.holds_personal_data,
            "source": pipeline.source.name,
            "columns": columns,
            "identifiers": [c["name"] for c in columns if c["identifier"]],
            "personal": [c["name"] for c in columns if c["role"] == "personal"],
            "sensitive": [c["name"] for c in columns if c["sensitive"]],
            "pseudonymised": [c["name"] for c in columns if c["pseudonymised"]],
        },
        "recipients": _recipients(pipeline, trust),
        "retention": {
            "days": days,
            "text": (
                f"{days} days after ingestion: raw files and the snapshots derived from them "
                "then have their data keys destroyed"
                if days is not None
                else "until erased: no retention period is set for the source"
            ),
            "enforced_by": (
                f"job {pipeline.name}_privacy on schedule `{cron}` "
                f"({pipeline.orchestration.timezone})"
                if cron
                else f"job {pipeline.name}_privacy, run on demand (no schedule)"
            ),
        },
        "security_measures": _security_measures(pipeline, store, trust),
        "erasures": _erasures(pipeline, store, trust),
    }
    record["missing"] = [
        name
        for name, value in (
            ("controller", privacy.controller),
            ("purpose", privacy.purpose),
            ("legal_basis", privacy.legal_basis),
            ("data_subjects", privacy.data_subjects),
        )
        if not value
    ]
    return record


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ") if value not in (None, "") else "—"


def render_markdown(record: Mapping[str, Any]) -> str:
    """The record as a Markdown document for people (the JSON form is for tools)."""
    data = record["personal_data"]
    lines = [
        f"# {record['title']}: {record['pipeline']}",
        "",
        f"Generated {record['generated_at']}.",
        "",
    ]
    if record.get("missing"):
        lines += [
            f"**Incomplete**: the pipeline's privacy spec does not state "
            f"{', '.join(record['missing'])}.",
            "",
        ]
    lines += [
        "## Controller",
        "",
        _cell(record["controller"]),
        "",
        "## Purpose of the processing",
        "",
        _cell(record["purpose"]),
        "",
        "## Legal basis",
        "",
        _cell(record["legal_basis"]),
        "",
        "## Categories of data subjects",
        "",
        *([f"- {s}" for s in record["data_subjects"]] or ["—"]),
        "",
        "## Categories of personal data",
        "",
        f"Source `{data['source']}`; "
        + ("holds personal data." if data["holds_personal_data"] else "no personal data."),
        "",
        "| Column | Role | Type | Personal | Pseudonymised | Stored | Description |",
        "|---|---|---|---|---|---|---|",
    ]
    for column in data["columns"]:
        # A feature audited as a protected attribute (the spec's sensitive_features) says so.
        sensitive = column["sensitive"] and column["role"] != "sensitive"
        role = column["role"] + (" (sensitive)" if sensitive else "")
        lines.append(
            f"| `{column['name']}` | {role} | {column['type']} | "
            f"{'yes' if column['personal'] else 'no'} | "
            f"{'yes' if column['pseudonymised'] else 'no'} | {_cell(column['stored'])} | "
            f"{_cell(column['description'])} |"
        )
    lines.append("")
    for label, key in (("Identifiers", "identifiers"), ("Personal", "personal"),
                       ("Sensitive", "sensitive"), ("Pseudonymised", "pseudonymised")):  # fmt: skip
        lines.append(f"- {label}: {', '.join(data[key]) or 'none'}")
    lines += ["", "## Recipients", "", "| Recipient | Identity | Processing |", "|---|---|---|"]
    for recipient in record["recipients"]:
        lines.append(
            f"| {_cell(recipient['recipient'])} | {_cell(recipient['identity'])} | "
            f"{_cell(recipient['processing'])} |"
        )
    retention = record["retention"]
    erasures = record["erasures"]
    lines += [
        "",
        "## Retention",
        "",
        f"{retention['text']}. Enforced by {retention['enforced_by']}.",
        "",
        "## Technical and organisational security measures",
        "",
        *[f"- {m}" for m in record["security_measures"]],
        "",
        "## Erasures done",
        "",
        f"- Requests: {erasures['requests']} ({erasures['subjects']} data subjects, by hashed "
        "identifier)",
        f"- Last request: {erasures['last'] or 'none'}",
        "- Snapshots whose keys were destroyed: "
        + (
            ", ".join(f"{n} ({reason})" for reason, n in erasures["snapshots_shredded"].items())
            or "none"
        ),
        f"- From: {erasures['source']}",
        "",
    ]
    return "\n".join(lines)
