"""Model bundles: the model, its lineage and its card, signed together.

A bundle is an MLflow model directory (``MLmodel``, the skops file, environment files) plus:

* ``lineage.json`` — the digests of the raw, validated and feature snapshots the model came
  from (read from the immutable store's manifests, not from "latest" records), the model's
  digest, code version, parameters and metrics, the policy applied (and its fingerprint), and
  every required check's verdict with the digest it judged and the audit record that holds it;
* ``MODEL_CARD.md`` — intended use, data, metrics, fairness table, robustness, privacy risk and
  limitations, for people.

Because the signature covers ``lineage.json``, a verified bundle proves offline which data and
which check results produced the model. `verify_lineage` re-establishes all of it: the model
file hashes to the recorded digest, every referenced snapshot still exists and re-hashes, every
required verdict is in the audit trail as recorded, bound to the right digest, and the policy
is today's.
"""

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from secure_pipeline.errors import IntegrityError, SecurePipelineError
from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.registry.signing import SIGNATURE_FILE
from secure_pipeline.storage.audit import AuditLog, AuditRecord
from secure_pipeline.storage.snapshots import SnapshotStore, canonical_json, snapshot_key, utc_now

LINEAGE_FILE = "lineage.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
CARD_FILE = "MODEL_CARD.md"
MODEL_FILE = "model.skops"
LINEAGE_VERSION = 1

# Checks whose verdicts a model needs, by the stage whose snapshot they judge.
REQUIRED_CHECKS: Mapping[str, tuple[str, ...]] = {
    "raw": ("provenance_complete", "schema_conforms"),
    "validated": ("reject_rate_within_limit", "expectations_met"),
    "features": ("feature_drift",),
    "model": (
        "performance_meets_policy",
        "adversarial_robustness",
        "membership_inference_risk",
        "fairness_audit",
    ),
}
# Data checks may end in a warning (quarantined rows, mild drift) without blocking; the model's
# gates must pass outright.
_WARNING_ACCEPTED = {"raw", "validated", "features"}


class LineageError(SecurePipelineError):
    """A bundle's lineage does not hold: a missing or changed snapshot, or a missing verdict."""


# Settings applied when a model is promoted, not when it is judged: changing them does not make
# earlier verdicts stale (approvals are counted at promotion time, under today's setting).
_PROMOTION_SETTINGS = ("approvals_required",)


def policy_fingerprint(pipeline: SecurePipeline) -> str:
    """SHA-256 of the judging thresholds: two policies match only if every one of them does."""
    thresholds = {k: v for k, v in asdict(pipeline.policy).items() if k not in _PROMOTION_SETTINGS}
    return hashlib.sha256(canonical_json(thresholds)).hexdigest()


def stage_assets(pipeline: SecurePipeline) -> dict[str, str]:
    """Asset name of each stage."""
    return {
        "raw": pipeline.raw_asset_name,
        "validated": f"validated_{pipeline.source.name}",
        "features": "features",
        "model": "trained_model",
    }


def _snapshot(store: SnapshotStore, asset: str, sha: str, ext: str) -> dict[str, Any]:
    key = snapshot_key(asset, sha, ext)
    manifest = store.read_manifest((key, sha))
    return {"asset": asset, "key": key, "sha256": sha, "size": manifest.size}


def _upstream(store: SnapshotStore, snapshot: Mapping[str, Any], asset: str) -> str:
    manifest = store.read_manifest((snapshot["key"], snapshot["sha256"]))
    digest = manifest.upstream.get(asset)
    if not digest:
        raise LineageError(
            f"the manifest of {snapshot['key']} does not record which {asset} snapshot it came "
            "from; the lineage cannot be established"
        )
    return digest


def _verdicts(audit: AuditLog, subjects: Mapping[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """The latest audit verdict of every required check for the digest it must judge."""
    wanted = {
        (asset, check): (stage, digest)
        for stage, (asset, digest) in subjects.items()
        for check in REQUIRED_CHECKS[stage]
    }
    latest: dict[tuple[str, str], AuditRecord] = {}
    for record in audit.verified_records():
        if record.event != "check.evaluated":
            continue
        key = (record.details.get("asset"), record.details.get("check"))
        if key in wanted and record.subject == wanted[key][1]:
            latest[key] = record
    verdicts = []
    for (asset, check), (stage, digest) in wanted.items():
        record = latest.get((asset, check))
        if record is None:
            raise LineageError(
                f"no verdict of {check} on {asset} for {digest[:12]} is in the audit trail; "
                "materialize the asset with its checks before registering the model"
            )
        verdicts.append(
            {
                "stage": stage,
                "asset": asset,
                "check": check,
                "subject": digest,
                "passed": bool(record.details.get("passed")),
                "severity": record.details.get("severity"),
                "audit_record": f"{record.seq}:{record.hash}",
                "evaluated_at": record.ts,
            }
        )
    return verdicts


def verdict_problems(verdicts: list[Mapping[str, Any]]) -> list[str]:
    """Verdicts that do not let a model through: failed gates, errors on data checks."""
    problems = []
    for verdict in verdicts:
        if verdict["passed"]:
            continue
        if verdict["stage"] in _WARNING_ACCEPTED and verdict["severity"] == "WARN":
            continue
        problems.append(
            f"{verdict['check']} on {verdict['asset']} failed for {verdict['subject'][:12]}"
        )
    return problems


def build_lineage(
    pipeline: SecurePipeline,
    store: SnapshotStore,
    audit: AuditLog,
    *,
    model_sha256: str,
    model_metadata: Mapping[str, Any],
    run_id: str,
) -> dict[str, Any]:
    """Assemble the lineage document of a model snapshot.

    Args:
        pipeline: The spec.
        store: The snapshot store.
        audit: The audit trail.
        model_sha256: The model snapshot's digest.
        model_metadata: Its materialization metadata (features digest, metrics, MLflow run).
        run_id: The Dagster run registering it.

    Returns:
        The lineage document.

    Raises:
        LineageError: When a snapshot's origin or a required verdict cannot be found.
    """
    from importlib.metadata import version

    assets = stage_assets(pipeline)
    model = _snapshot(store, assets["model"], model_sha256, "skops")
    features = _snapshot(store, assets["features"], model_metadata["features_sha256"], "parquet")
    validated = _snapshot(
        store, assets["validated"], _upstream(store, features, assets["validated"]), "parquet"
    )
    raw = _snapshot(store, assets["raw"], _upstream(store, validated, assets["raw"]), "json")
    subjects = {
        "raw": (assets["raw"], raw["sha256"]),
        "validated": (assets["validated"], validated["sha256"]),
        "features": (assets["features"], features["sha256"]),
        "model": (assets["model"], model_sha256),
    }
    from secure_pipeline.training.serialization import TRUSTED_TYPES

    return {
        "lineage_version": LINEAGE_VERSION,
        "pipeline": pipeline.name,
        "code_version": pipeline.code_version,
        "package_version": version("secure-pipeline"),
        "created_at": utc_now(),
        "dagster_run_id": run_id,
        "model": {
            **model,
            "file": MODEL_FILE,
            "estimator": pipeline.model.estimator,
            "params": dict(pipeline.model.params),
            "seed": pipeline.model.seed,
            "split": model_metadata.get("split"),
            "inputs": list(model_metadata.get("inputs", [])),
            "excluded_inputs": list(pipeline.model.exclude_features),
            "trusted_types": list(TRUSTED_TYPES),
            "mlflow_run_id": model_metadata.get("mlflow_run_id"),
        },
        "data": {"raw": raw, "validated": validated, "features": features},
        "metrics": {k: v for k, v in model_metadata.items() if k.startswith(("holdout_", "test_"))},
        "policy": asdict(pipeline.policy),
        "policy_sha256": policy_fingerprint(pipeline),
        "checks": _verdicts(audit, subjects),
    }


def model_card(
    pipeline: SecurePipeline, lineage: Mapping[str, Any], results: Mapping[str, Any]
) -> str:
    """The model card (Markdown) for people reading the bundle or the registry."""
    metrics = lineage["metrics"]
    policy = lineage["policy"]
    lines = [
        f"# Model card: {pipeline.name} ({lineage['model']['estimator'].replace('_', ' ')})",
        "",
        f"Model digest `{lineage['model']['sha256']}`, trained by code version "
        f"{lineage['code_version']} in Dagster run `{lineage['dagster_run_id']}`.",
        "",
        "## Intended use",
        "",
        (pipeline.description or "Binary classification as described by the pipeline spec.")
        + f" Predicts `{pipeline.schema.label} = {pipeline.schema.positive_label}`. Decisions "
        "about people should be reviewed by a person; the model is not meant for any other "
        "population than the one its data describes.",
        "",
        "## Data",
        "",
        "| stage | snapshot | bytes |",
        "| --- | --- | --- |",
        *(
            f"| {stage}{' (fileset index)' if stage == 'raw' else ''} | "
            f"`{snap['sha256'][:16]}…` | {snap['size']} |"
            for stage, snap in lineage["data"].items()
        ),
        "",
        f"Inputs: {', '.join(lineage['model']['inputs'])}. Not used as inputs: "
        f"{', '.join(lineage['model']['excluded_inputs']) or 'none'}.",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(
            f"| {k} | {v:.0f} |" if k.endswith("_rows") else f"| {k} | {v:.4f} |"
            for k, v in sorted(metrics.items())
            if isinstance(v, float)
        ),
        "",
        "## Security checks",
        "",
        "| check | on | verdict |",
        "| --- | --- | --- |",
        *(
            f"| {c['check']} | {c['asset']} | {'passed' if c['passed'] else c['severity']} |"
            for c in lineage["checks"]
        ),
        "",
    ]
    robustness = results.get("adversarial_robustness")
    if robustness:
        lines += [
            "## Robustness",
            "",
            f"{robustness.get('attack')}: accuracy {robustness.get('clean_accuracy', 0):.3f} "
            f"clean, {robustness.get('adversarial_accuracy', 0):.3f} with every numeric input "
            f"moved by up to {policy['robustness_epsilon']} standard deviations "
            f"(limit: a drop of {policy['max_robustness_drop']}).",
            "",
        ]
    privacy = results.get("membership_inference_risk")
    if privacy:
        lines += [
            "## Privacy risk",
            "",
            f"{privacy.get('attack')}: attack AUC {privacy.get('auc', 0):.3f}, advantage "
            f"{privacy.get('advantage', 0):.3f} (limits {policy['max_membership_auc']} / "
            f"{policy['max_membership_advantage']}).",
            "",
        ]
    fairness = results.get("fairness_audit")
    if fairness:
        lines += [
            "## Fairness",
            "",
            "| feature | group | rows | selection rate | TPR | FPR | gated |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *(
                f"| {g['feature']} | {g['group']} | {g['rows']} | {g['selection_rate']} | "
                f"{g['tpr']} | {g['fpr']} | {'yes' if g['gated'] else 'no'} |"
                for g in fairness.get("groups", [])
            ),
            "",
        ]
        reported = policy.get("fairness_report_only") or []
        if reported:
            lines += [f"Reported, not gating: {', '.join(reported)}.", ""]
    lines += [
        "## Limitations",
        "",
        "- Judged on the evaluation set recorded in the lineage; performance on other "
        "populations is unknown.",
        "- The robustness check bounds small perturbations of numeric inputs only; it is not a "
        "proof against every attack.",
        "- Fairness is audited for the declared sensitive features only; intersections and "
        "groups smaller than the policy's minimum are reported, not gated.",
        "",
    ]
    return "\n".join(lines)


def bundle_digest(directory: Path) -> str:
    """SHA-256 over the sorted (path, file digest) list of a bundle, signature excluded."""
    entries = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name == SIGNATURE_FILE:
            continue
        entries.append(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def write_bundle(
    directory: Path, model_bytes: bytes, lineage: Mapping[str, Any], card: str
) -> None:
    """Write an (unsigned) bundle: MLflow model directory, lineage, card.

    The MLflow files are written by MLflow's sklearn flavor (skops serialization, explicit
    trusted types), then the model file is replaced by the exact bytes the checks judged.
    """
    import re

    import mlflow.sklearn

    from secure_pipeline.training.serialization import TRUSTED_TYPES, load_model

    mlflow.sklearn.save_model(
        load_model(model_bytes),
        str(directory),
        serialization_format="skops",
        skops_trusted_types=list(TRUSTED_TYPES),
        # Listed, not inferred: inference imports the model in a subprocess.
        pip_requirements=_requirements(),
    )
    (directory / MODEL_FILE).write_bytes(model_bytes)
    mlmodel = directory / "MLmodel"
    mlmodel.write_text(
        re.sub(
            r"model_size_bytes: \d+", f"model_size_bytes: {len(model_bytes)}", mlmodel.read_text()
        )
    )
    (directory / LINEAGE_FILE).write_bytes(json.dumps(lineage, indent=2, sort_keys=True).encode())
    (directory / CARD_FILE).write_text(card)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas")]


def read_lineage(directory: Path) -> dict[str, Any]:
    """The lineage document of a (verified) bundle.

    Raises:
        LineageError: When it is missing or not JSON.
    """
    try:
        return json.loads((directory / LINEAGE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise LineageError(f"{directory} has no readable {LINEAGE_FILE}: {exc}") from None


def verify_lineage(
    directory: Path,
    lineage: Mapping[str, Any],
    *,
    store: SnapshotStore | None,
    audit: AuditLog | None,
    pipeline: SecurePipeline | None,
) -> list[str]:
    """Check a bundle's lineage; return every problem found (empty when it holds).

    Args:
        directory: The bundle (signature already verified).
        lineage: Its lineage document.
        store: The snapshot store, to re-hash every referenced snapshot (skipped when None,
            e.g. an inference server without access to training data).
        audit: The audit trail, to find every recorded verdict (skipped when None).
        pipeline: Today's spec, to require today's policy (skipped when None).
    """
    problems: list[str] = []
    model = lineage.get("model", {})
    # The model is always model.skops: the file a loader reads must be the file verified here.
    if model.get("file") != MODEL_FILE:
        problems.append(f"the lineage names model file {model.get('file')!r}, not {MODEL_FILE}")
    model_file = directory / MODEL_FILE
    if not model_file.is_file():
        problems.append(f"the bundle has no {MODEL_FILE}")
    elif hashlib.sha256(model_file.read_bytes()).hexdigest() != model.get("sha256"):
        problems.append(
            f"{MODEL_FILE} does not hash to the lineage's model digest {model.get('sha256')}"
        )
    data = lineage.get("data", {})
    if set(data) != {"raw", "validated", "features"}:
        problems.append(
            f"the lineage must name the raw, validated and features snapshots, found {sorted(data)}"
        )
    subjects = {"model": model.get("sha256"), **{s: v.get("sha256") for s, v in data.items()}}
    for stage, digest in subjects.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            problems.append(f"the lineage gives no valid digest for the {stage} snapshot")
    checks = lineage.get("checks", [])
    recorded = [(c.get("stage"), c.get("check")) for c in checks]
    for stage, names in REQUIRED_CHECKS.items():
        for name in names:
            if (stage, name) not in recorded:
                problems.append(f"the lineage records no verdict of {name} ({stage})")
    for check in checks:
        if (check.get("stage"), check.get("check")) not in {
            (stage, name) for stage, names in REQUIRED_CHECKS.items() for name in names
        }:
            problems.append(f"the lineage records an unknown verdict {check.get('check')!r}")
        expected = subjects.get(check.get("stage"))
        if expected is None or check.get("subject") != expected:
            problems.append(
                f"{check.get('check')} judged {str(check.get('subject'))[:12]}, not the "
                f"{check.get('stage')} snapshot {str(expected)[:12]} of this model"
            )
    problems.extend(verdict_problems(checks))
    if pipeline is not None and lineage.get("policy_sha256") != policy_fingerprint(pipeline):
        problems.append(
            "the model was judged under a different policy than today's "
            f"({str(lineage.get('policy_sha256'))[:12]} vs {policy_fingerprint(pipeline)[:12]}); "
            "re-run its checks under today's policy before it may be promoted or served"
        )
    if store is not None:
        for snap in [model, *data.values()]:
            try:
                if str(snap.get("asset", "")).startswith("raw_"):
                    store.read_fileset((snap["key"], snap["sha256"]))
                else:
                    store.read_bytes((snap["key"], snap["sha256"]))
            except (IntegrityError, KeyError, ValueError) as exc:
                problems.append(f"lineage snapshot {snap.get('key')}: {exc}")
    if audit is not None:
        problems.extend(_audit_problems(checks, audit))
    return problems


def _audit_problems(checks: list[Mapping[str, Any]], audit: AuditLog) -> list[str]:
    """Each recorded verdict must be the audit record it cites, not overturned since.

    The cited record must be a verdict of the same check on the same asset and digest, with the
    same outcome. A later verdict of that check on that digest may pass again (the pipeline was
    re-run on the same data); a later one that does not let the model through overturns it.
    """
    history: dict[tuple[Any, Any, Any], list[AuditRecord]] = {}
    for record in audit.verified_records():
        if record.event == "check.evaluated":
            key = (record.details.get("asset"), record.details.get("check"), record.subject)
            history.setdefault(key, []).append(record)
    problems = []
    for check in checks:
        name = check.get("check")
        seq, _, digest = str(check.get("audit_record", "")).partition(":")
        records = history.get((check.get("asset"), name, check.get("subject")), [])
        cited = next((r for r in records if f"{r.seq}" == seq and r.hash == digest), None)
        if (
            cited is None
            or bool(cited.details.get("passed")) != bool(check.get("passed"))
            or cited.details.get("severity") != check.get("severity")
        ):
            problems.append(
                f"the lineage's verdict of {name} on {check.get('asset')} for "
                f"{str(check.get('subject'))[:12]} (audit record {seq}) is not a verdict the "
                "audit trail holds for that check and digest"
            )
            continue
        for later in records:
            if later.seq <= cited.seq:
                continue
            outcome = {
                "stage": check.get("stage"),
                "asset": check.get("asset"),
                "check": name,
                "subject": later.subject,
                "passed": bool(later.details.get("passed")),
                "severity": later.details.get("severity"),
            }
            if verdict_problems([outcome]):
                problems.append(
                    f"a later verdict of {name} on {str(later.subject)[:12]} (audit record "
                    f"{later.seq}) failed, overturning the one in the lineage"
                )
                break
    return problems
