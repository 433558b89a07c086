"""Model bundles: the model, its lineage, its card and the signed verdicts that admitted it.

A bundle is an MLflow model directory (``MLmodel``, the skops file, environment files) plus:

* ``lineage.json`` — the digests of the raw, validated and feature snapshots the model came
  from (read from the immutable store's manifests, not from "latest" records), the model's
  digest, code version, parameters and metrics, the policy applied (and its fingerprint), and
  every required check's verdict with the digest it judged and the attestation that holds it;
* ``evidence/<stage>.<check>.json`` — each of those verdicts as the DSSE envelope the judging
  identity signed (``ingest`` for the data checks, ``train`` for the model gates);
* ``MODEL_CARD.md`` — intended use, data, metrics, fairness table, robustness, privacy risk and
  limitations, for people;
* the MLflow model signature (in ``MLmodel``: the input columns and types, the
  ``predict_proba`` output) and an input example (``input_example.json`` and
  ``serving_input_example.json``, JSON, never pickle) of model inputs only: written before the
  bundle is signed, so the signature covers them like every other file.

Because the bundle signature covers the lineage and the envelopes, and each envelope carries its
own signature, a verified bundle proves offline which data and which *signed* verdicts produced
the model. `verify_lineage` re-establishes all of it: the model file hashes to the recorded
digest, every required verdict is an envelope signed by the identity the trust policy names for
it, about exactly this model's snapshot, judged under the lineage's policy (and today's), and,
when the store is reachable, every referenced snapshot still re-hashes and no later signed
verdict overturned one in the bundle.
"""

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure_pipeline.errors import (
    ErasedError,
    IntegrityError,
    PolicyViolation,
    SecurePipelineError,
    SignatureError,
)
from secure_pipeline.features.window import lineage_snapshots, window_document
from secure_pipeline.names import (
    FAIRNESS,
    MEMBERSHIP,
    ONNX_EQUIVALENT,
    POISONING_SCREEN,
    REQUIRED_CHECKS,
    ROBUSTNESS,
)
from secure_pipeline.registry.signing import SIGNATURE_FILE
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.snapshots import SnapshotStore, sha256_hex, snapshot_key, utc_now
from secure_pipeline.trust import attestations
from secure_pipeline.trust.identities import VERDICT_IDENTITY
from secure_pipeline.trust.policy import TrustPolicy

if TYPE_CHECKING:
    import pandas as pd

LINEAGE_FILE = "lineage.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
CARD_FILE = "MODEL_CARD.md"
MODEL_FILE = "model.skops"
# The ONNX copy of the model (absent when skl2onnx cannot convert the estimator); the lineage
# records it under this same name.
ONNX_FILE = "model.onnx"
EVIDENCE_DIR = "evidence"
# 3: the model's ONNX copy is proved by the train identity's signed onnx_equivalent verdict.
LINEAGE_VERSION = 3
# 4: the same, for a model of a partitioned pipeline: ``data`` names the training window and
# every day's raw, validated and features snapshots; each day's checks are recorded with it.
PARTITIONED_LINEAGE_VERSION = 4
DATA_STAGES = ("raw", "validated", "features")
# The first version whose model stage has an onnx_equivalent verdict. An earlier bundle still
# verifies without one (models promoted before keep serving), but its ONNX copy was vouched
# for by the release identity alone: it is never served (`onnx_proved`), the skops file is.
ONNX_PROVED_FROM = 3
MAX_LINEAGE_BYTES = 16 * 1024 * 1024
VERDICTS = "verdicts"
# Rows of the input example: enough to show the shape of a request, few enough to read.
EXAMPLE_ROWS = 5
# Roles whose columns never leave the pipeline as model inputs, examples included.
_NEVER_INPUTS = ("identifier", "personal", "ignore")

# Data checks may end in a warning (quarantined rows, mild drift) without blocking; the model's
# gates must pass outright.
_WARNING_ACCEPTED = {"raw", "validated", "features"}


class LineageError(SecurePipelineError):
    """A bundle's lineage does not hold: a missing or changed snapshot, or a missing verdict."""


def policy_fingerprint(pipeline: PipelineSpec) -> str:
    """SHA-256 of the pipeline's judging thresholds (see `SecurityPolicy.fingerprint`)."""
    return pipeline.policy.fingerprint()


def required_checks(trust: TrustPolicy) -> dict[str, tuple[str, ...]]:
    """Checks a model needs a passing signed verdict of, by stage.

    The library requires every gate of every stage; a trust policy's ``required_checks`` can
    insist on checks by name (so that a policy owner sees them refused if a pipeline stopped
    running them), never waive one.

    Raises:
        LineageError: When the trust policy requires a check no stage runs.
    """
    known = {name: stage for stage, names in REQUIRED_CHECKS.items() for name in names}
    unknown = [name for name in trust.required_checks if name not in known]
    if unknown:
        raise LineageError(
            f"the trust policy requires checks {unknown}, which no stage of the pipeline runs "
            f"(known: {', '.join(sorted(known))})"
        )
    return {stage: tuple(names) for stage, names in REQUIRED_CHECKS.items()}


# How a lineage problem says its snapshot was erased (crypto-shredded) rather than altered: the
# verification reports those as their own step, which a ``warn`` erased-data policy lets pass.
ERASED_LINEAGE = "erased lineage snapshot "


def stage_assets(pipeline: PipelineSpec) -> dict[str, Any]:
    """Asset key of each lineage stage."""
    return {stage: pipeline.names.stage_key(stage) for stage in REQUIRED_CHECKS}


def _snapshot(
    store: SnapshotStore, asset: Any, sha: str, ext: str, partition: str | None = None
) -> dict[str, Any]:
    # Content stored again after its first copy was crypto-shredded lives under the next
    # generation's key; the newest generation is the readable one.
    key = snapshot_key(asset.path, sha, ext, partition)
    generation = 2
    while store.exists(
        following := snapshot_key(asset.path, sha, ext, partition, generation=generation)
    ):
        key, generation = following, generation + 1
    manifest = store.read_manifest((key, sha))
    entry = {"asset": asset.to_user_string(), "key": key, "sha256": sha, "size": manifest.size}
    return entry if partition is None else {**entry, "partition": partition}


def _data_chain(
    store: SnapshotStore, assets: Mapping[str, Any], features_sha: str, partition: str | None
) -> dict[str, dict[str, Any]]:
    """The raw, validated and features snapshots behind one features snapshot."""
    features = _snapshot(store, assets["features"], features_sha, "parquet", partition)
    validated_sha = _upstream(store, features, assets["validated"])
    validated = _snapshot(store, assets["validated"], validated_sha, "parquet", partition)
    raw_sha = _upstream(store, validated, assets["raw"])
    raw = _snapshot(store, assets["raw"], raw_sha, "json", partition)
    return {"raw": raw, "validated": validated, "features": features}


def _window_problems(lineage: Mapping[str, Any]) -> list[str]:
    """A partitioned lineage's window is exactly the document its days make."""
    data = lineage.get("data", {})
    window, days = data.get("window"), data.get("partitions")
    if set(data) != {"window", "partitions"} or not isinstance(window, Mapping):
        return [f"the lineage of a partitioned pipeline must name its window and days, found "
                f"{sorted(data)}"]  # fmt: skip
    if not isinstance(days, Mapping) or not days:
        return ["the lineage names a training window without days"]
    problems = []
    for day, stages in sorted(days.items()):
        if not isinstance(stages, Mapping) or set(stages) != set(DATA_STAGES):
            found = sorted(stages) if isinstance(stages, Mapping) else stages
            problems.append(
                f"the lineage must name the raw, validated and features snapshots of {day}, "
                f"found {found}"
            )
            continue
        for stage, entry in stages.items():
            if not isinstance(entry, Mapping) or entry.get("partition") != day:
                problems.append(f"the lineage's {stage} snapshot of {day} is not of that day")
    if problems:
        return problems
    listed = [{"partition": d, "key": s["features"].get("key"),
               "sha256": s["features"].get("sha256")} for d, s in sorted(days.items())]  # fmt: skip
    document = window_document(str(lineage.get("pipeline")), str(window.get("asset")), listed)
    if sha256_hex(document) != window.get("sha256"):
        problems.append(
            f"the training window {str(window.get('sha256'))[:12]} is not the window of the days "
            "the lineage names: a day was added, removed or replaced"
        )
    return problems


def _upstream(store: SnapshotStore, snapshot: Mapping[str, Any], asset: Any) -> str:
    manifest = store.read_manifest((snapshot["key"], snapshot["sha256"]))
    digest = manifest.upstream.get(asset.to_user_string())
    if not digest:
        raise LineageError(
            f"the manifest of {snapshot['key']} does not record which {asset} snapshot it came "
            "from; the lineage cannot be established"
        )
    return digest


def _evidence_file(stage: str, check: str, partition: str | None = None) -> str:
    if partition is not None:
        return f"{EVIDENCE_DIR}/{stage}.{partition}.{check}.json"
    return f"{EVIDENCE_DIR}/{stage}.{check}.json"


def signed_verdicts(
    store: SnapshotStore, trust: TrustPolicy, *, stage: str, asset: str, digest: str
) -> tuple[list[attestations.Attestation], int]:
    """Every verdict about ``digest`` of ``asset`` signed by the identity judging ``stage``.

    Returns:
        The verified attestations, and how many stored envelopes did not verify (forged,
        edited, or signed by another identity): they are not evidence and are left out.
    """
    identity = VERDICT_IDENTITY[stage]
    found, rejected = [], 0
    for _key, data in attestations.stored_envelopes(store, VERDICTS, digest):
        try:
            attestation = attestations.open_envelope(
                data, trust, identities=(identity,), predicate_type=attestations.VERDICT_TYPE
            )
        except SignatureError:
            rejected += 1
            continue
        if attestation.predicate.get("asset") == asset and attestation.subjects == {asset: digest}:
            found.append(attestation)
    return found, rejected


def _collect_verdicts(
    pipeline: PipelineSpec,
    store: SnapshotStore,
    trust: TrustPolicy,
    subjects: list[tuple[str, str | None, str, str]],
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The latest signed verdict of every required check on its digest, under today's policy.

    ``subjects`` are ``(stage, partition, asset, digest)``: each stage once, or each data
    stage once per day of a partitioned pipeline's window.
    """
    fingerprint = policy_fingerprint(pipeline)
    checks, files = [], {}
    required = required_checks(trust)
    for stage, partition, asset, digest in subjects:
        names = required.get(stage, ())
        verdicts, rejected = signed_verdicts(store, trust, stage=stage, asset=asset, digest=digest)
        for check in names:
            mine = [v for v in verdicts if v.predicate.get("check") == check]
            current = [v for v in mine if v.predicate.get("policy_sha256") == fingerprint]
            if not current:
                raise LineageError(
                    f"no verdict of {check} on {asset}"
                    + (f" {partition}" if partition is not None else "")
                    + f" for {digest[:12]} signed by the "
                    f"{VERDICT_IDENTITY[stage]} identity under today's policy "
                    f"({fingerprint[:12]}) is in the store"
                    + (f"; {len(mine) - len(current)} were judged under another policy" if
                       len(mine) > len(current) else "")
                    + (f"; {rejected} stored envelope(s) did not verify and were ignored"
                       if rejected else "")
                    + ". Materialize the asset with its checks before registering the model."
                )  # fmt: skip
            latest = max(current, key=lambda v: (str(v.predicate.get("evaluated_at")), v.sha256))
            path = _evidence_file(stage, check, partition)
            files[path] = latest.data
            checks.append(
                {
                    "stage": stage,
                    **({"partition": partition} if partition is not None else {}),
                    "asset": asset,
                    "check": check,
                    "subject": digest,
                    "passed": bool(latest.predicate.get("passed")),
                    "severity": latest.predicate.get("severity"),
                    "identity": latest.identity,
                    "evaluated_at": latest.predicate.get("evaluated_at"),
                    "attestation": path,
                    "attestation_sha256": latest.sha256,
                }
            )
    return checks, files


def verdict_problems(verdicts: list[Mapping[str, Any]]) -> list[str]:
    """Verdicts that do not let a model through: failed gates, errors on data checks."""
    problems = []
    for verdict in verdicts:
        if verdict["passed"]:
            continue
        if verdict["check"] == POISONING_SCREEN and verdict["severity"] == "WARN":
            # The screen warns only when it could not judge the data (too few rows of a
            # class): the batch may flow on for people to look at, but no model trained on
            # unscreened data is let through; the policy can turn the screen off (signed).
            problems.append(
                f"{POISONING_SCREEN} could not judge {verdict['asset']} "
                f"{verdict['subject'][:12]} (too few rows of a class): add rows, or set the "
                "policy's poisoning_screen to false to train without the screen"
            )
            continue
        if verdict["stage"] in _WARNING_ACCEPTED and verdict["severity"] == "WARN":
            continue
        problems.append(
            f"{verdict['check']} on {verdict['asset']} failed for {verdict['subject'][:12]}"
        )
    return problems


def build_lineage(
    pipeline: PipelineSpec,
    store: SnapshotStore,
    trust: TrustPolicy,
    *,
    model_sha256: str,
    model_metadata: Mapping[str, Any],
    run_id: str,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Assemble the lineage document of a model snapshot and the verdicts it rests on.

    Args:
        pipeline: The spec.
        store: The snapshot store.
        trust: The trust policy (whose identities' verdicts count).
        model_sha256: The model snapshot's digest.
        model_metadata: Its materialization metadata (features digest, metrics, MLflow run).
        run_id: The Dagster run registering it.

    Returns:
        The lineage document, and the evidence files of the bundle (path -> signed envelope).

    Raises:
        LineageError: When a snapshot's origin or a required signed verdict cannot be found.
    """
    from importlib.metadata import version

    from secure_pipeline.features.window import is_window_key, read_window

    assets = stage_assets(pipeline)
    model = _snapshot(store, assets["model"], model_sha256, "skops")
    features_sha = str(model_metadata["features_sha256"])
    data: dict[str, Any]
    if is_window_key(pipeline, str(model_metadata.get("features_key")), features_sha):
        days = read_window(store, pipeline, features_sha)
        data = {
            "window": {
                "asset": assets["features"].to_user_string(),
                "key": str(model_metadata["features_key"]),
                "sha256": features_sha,
                "first": days[0]["partition"],
                "last": days[-1]["partition"],
            },
            "partitions": {
                d["partition"]: _data_chain(store, assets, d["sha256"], d["partition"])
                for d in days
            },
        }
    else:
        data = _data_chain(store, assets, features_sha, None)
    document = {"data": data}
    subjects = [
        (stage, day, str(e["asset"]), str(e["sha256"]))
        for stage, day, e in lineage_snapshots(document)
    ]
    subjects.append(("model", None, str(model["asset"]), model_sha256))
    from secure_pipeline.training.serialization import TRUSTED_TYPES, allowed_types

    checks, evidence = _collect_verdicts(pipeline, store, trust, subjects)
    return {
        "lineage_version": PARTITIONED_LINEAGE_VERSION if "window" in data else LINEAGE_VERSION,
        "pipeline": pipeline.name,
        "code_version": pipeline.code_version,
        "package_version": version("secure-pipeline"),
        "created_at": utc_now(),
        "dagster_run_id": run_id,
        "model": {
            **model,
            "file": MODEL_FILE,
            "estimator": pipeline.model.estimator,
            "estimator_path": pipeline.model.estimator_path,
            "params": dict(pipeline.model.params),
            "seed": pipeline.model.seed,
            "split": model_metadata.get("split"),
            "inputs": list(model_metadata.get("inputs", [])),
            "excluded_inputs": list(pipeline.model.exclude_features),
            # Every type loading accepts (the project's plus the spec's), and the spec's alone.
            "trusted_types": allowed_types(pipeline.model.trusted_types),
            "project_trusted_types": list(TRUSTED_TYPES),
            "declared_trusted_types": list(pipeline.model.trusted_types),
            "mlflow_run_id": model_metadata.get("mlflow_run_id"),
        },
        "data": data,
        "metrics": {k: v for k, v in model_metadata.items() if k.startswith(("holdout_", "test_"))},
        "policy": asdict(pipeline.policy),
        "policy_sha256": policy_fingerprint(pipeline),
        "trust_policy_sha256": trust.digest,
        "checks": checks,
    }, evidence


def onnx_entry(data: bytes, pipeline: PipelineSpec) -> dict[str, Any]:
    """The lineage's record of the bundle's ONNX file: digest, opset, converter, input dtypes."""
    from importlib.metadata import version

    from secure_pipeline.training.onnx import ONNX_OPSET, TOLERANCE, input_dtypes

    return {
        "sha256": sha256_hex(data),
        "opset": ONNX_OPSET,
        "converter": f"skl2onnx {version('skl2onnx')}",
        "inputs": input_dtypes(pipeline),
        "tolerance": TOLERANCE,
    }


def onnx_proved(lineage: Mapping[str, Any]) -> bool:
    """Whether the lineage's version binds an ONNX copy to a signed equivalence verdict."""
    version = lineage.get("lineage_version")
    return isinstance(version, int) and version >= ONNX_PROVED_FROM


def onnx_copy(
    pipeline: PipelineSpec,
    store: SnapshotStore,
    trust: TrustPolicy,
    lineage: Mapping[str, Any],
    evidence: Mapping[str, bytes],
) -> tuple[bytes | None, dict[str, Any] | None]:
    """The ONNX copy the model's signed ``onnx_equivalent`` verdict names, read by its digest.

    Args:
        pipeline: The spec.
        store: The snapshot store (holds the copy the check stored).
        trust: The trust policy (the verdict must be the train identity's).
        lineage: The lineage being built (its checks name the verdict's envelope).
        evidence: The verdict envelopes by bundle path.

    Returns:
        The copy's bytes and the equivalence figures, or (None, None) when the verdict found
        no convertible copy.

    Raises:
        LineageError: When the lineage holds no such verdict or the envelope does not verify.
        IntegrityError: When the stored copy does not hash to the digest the verdict names.
    """
    from secure_pipeline.mlsec.checks import onnx_copy_key

    predicate = _onnx_verdict(lineage.get("checks", []), evidence, trust)
    metrics = predicate.get("metrics", {})
    digest = metrics.get("onnx_sha256")
    if digest is None:
        return None, None
    if not _HEX64.fullmatch(str(digest)):
        raise LineageError(f"the {ONNX_EQUIVALENT} verdict names no valid ONNX digest")
    data = store.read_bytes((onnx_copy_key(pipeline, digest), digest))
    figures = ("rows", "max_abs_diff", "label_disagreements", "tolerance", "evaluated_on")
    return data, {k: metrics.get(k) for k in figures}


def _onnx_verdict(checks: Any, files: Mapping[str, bytes], trust: TrustPolicy) -> Mapping[str, Any]:
    """The verified predicate of the lineage's ``onnx_equivalent`` verdict."""
    for check in checks:
        if check.get("stage") == "model" and check.get("check") == ONNX_EQUIVALENT:
            data = files.get(str(check.get("attestation")))
            if data is None:
                break
            try:
                return attestations.open_envelope(
                    data, trust, identities=(VERDICT_IDENTITY["model"],),
                    predicate_type=attestations.VERDICT_TYPE, what=f"the {ONNX_EQUIVALENT} verdict",
                ).predicate  # fmt: skip
            except SignatureError as exc:
                raise LineageError(str(exc)) from None
    raise LineageError(f"the lineage holds no signed verdict of {ONNX_EQUIVALENT}")


def model_card(
    pipeline: PipelineSpec, lineage: Mapping[str, Any], results: Mapping[str, Any]
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
        *_model_section(lineage["model"]),
        "## Data",
        "",
        *_window_line(lineage),
        "| stage | snapshot | bytes |",
        "| --- | --- | --- |",
        *(
            f"| {stage}{f' {day}' if day else ''}{' (fileset index)' if stage == 'raw' else ''} "
            f"| `{snap['sha256'][:16]}…` | {snap['size']} |"
            for stage, day, snap in lineage_snapshots(lineage)
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
    robustness = results.get(ROBUSTNESS)
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
    privacy = results.get(MEMBERSHIP)
    if privacy:
        lines += [
            "## Privacy risk",
            "",
            f"{privacy.get('attack')}: attack AUC {privacy.get('auc', 0):.3f}, advantage "
            f"{privacy.get('advantage', 0):.3f} (limits {policy['max_membership_auc']} / "
            f"{policy['max_membership_advantage']}).",
            "",
        ]
    fairness = results.get(FAIRNESS)
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


def _model_section(model: Mapping[str, Any]) -> list[str]:
    """The card's description of the estimator: what it is, how it was set, what it loads."""
    params = model.get("params") or {}
    declared = model.get("declared_trusted_types") or []
    project = model.get("project_trusted_types") or []
    return [
        "## Model",
        "",
        f"Estimator `{model.get('estimator_path', model['estimator'])}` after the shared "
        "preprocessing (standardised numbers, one-hot categories), seed "
        f"{model.get('seed')}.",
        "",
        "Parameters: "
        + (", ".join(f"`{k}={v!r}`" for k, v in sorted(params.items())) or "the defaults")
        + ".",
        "",
        "Types loading accepts beyond skops's defaults (every other type is refused): "
        + (", ".join(f"`{t}`" for t in project) or "none")
        + " (the project's); "
        + (", ".join(f"`{t}`" for t in declared) or "none")
        + " (declared by the pipeline spec's model.trusted_types).",
        "",
    ]


@dataclass(frozen=True)
class ModelInterface:
    """What MLflow records about how the model is called.

    Attributes:
        signature: The ``mlflow.models.ModelSignature`` (inputs, ``predict_proba`` output).
        example: A few rows of model inputs (a ``pandas.DataFrame``).
        synthetic: Whether the example is made of per-column typical values instead of rows
            (for pipelines whose rows describe people).
    """

    signature: Any
    example: "pd.DataFrame"
    synthetic: bool


def _window_line(lineage: Mapping[str, Any]) -> list[str]:
    window = lineage["data"].get("window")
    if window is None:
        return []
    days = len(lineage["data"]["partitions"])
    return [
        f"Trained on {days} days, {window['first']} to {window['last']} (training window "
        f"`{window['sha256'][:16]}…`).",
        "",
    ]


def model_interface(
    pipeline: PipelineSpec,
    model_bytes: bytes,
    store: SnapshotStore,
    features: Mapping[str, Any],
) -> ModelInterface:
    """The model's signature and input example, from the features it was trained on.

    The signature is inferred from the model's input frame (the columns it takes, typed as the
    features snapshot holds them) and its ``predict_proba`` output. The example holds model
    inputs only: never a column whose role is identifier, personal or ignore, nor the label or
    the split. When the pipeline's rows describe people (``holds_personal_data``) no row
    leaves the pipeline, and the release stage does not decrypt any: the example is one
    made-up row (each number the middle of its declared range, else 0; each category code 0),
    typed from the snapshot's plaintext manifest.

    Args:
        pipeline: The spec.
        model_bytes: The model snapshot (loaded with the spec's trusted types only).
        store: The snapshot store.
        features: The lineage's features snapshot (``key``, ``sha256``).

    Raises:
        PolicyViolation: When a model input is a column of a role that must never be one.
        IntegrityError: When the features snapshot does not verify.
    """
    from mlflow.models import infer_signature

    from secure_pipeline.training.models import model_inputs
    from secure_pipeline.training.serialization import load_model

    inputs, _ = model_inputs(pipeline)
    model = load_model(model_bytes, trusted=pipeline.model.trusted_types)
    ref = (str(features["key"]), str(features["sha256"]))
    if pipeline.holds_personal_data:
        example = _made_up_row(pipeline, store.read_manifest(ref).schema or {})
        frame, synthetic = example, True
    else:
        from secure_pipeline.storage.tables import parquet_to_table
        from secure_pipeline.training.models import split_rows

        table = parquet_to_table(store.read_bytes(ref)).to_pandas()
        frame = table[inputs.columns].iloc[split_rows(table, pipeline).evaluation]
        example, synthetic = frame.head(EXAMPLE_ROWS).reset_index(drop=True), False
    require_model_inputs_only(pipeline, list(example.columns))
    import warnings

    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: category codes never
        # are missing (-1 is their missing code), and numbers are floats.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(frame, model.predict_proba(frame))
    return ModelInterface(signature, example, synthetic)


def require_model_inputs_only(pipeline: PipelineSpec, columns: list[str]) -> None:
    """Refuse an input example holding anything but the model's inputs.

    The feature catalog never makes an identifier, personal or ignore column a model input;
    this holds the example to it whatever the catalog becomes, and keeps the label and the
    split out too.

    Raises:
        PolicyViolation: When a column is not a model input, or is one of those roles.
    """
    from secure_pipeline.training.models import model_inputs

    inputs, _ = model_inputs(pipeline)
    roles = {c.name: c.role for c in pipeline.schema.columns}
    wrong = [c for c in columns if c not in inputs.columns or roles.get(c) in _NEVER_INPUTS]
    if wrong:
        raise PolicyViolation(
            f"the input example of {pipeline.name} would hold {wrong}, expected model inputs "
            f"only ({', '.join(inputs.columns)}); an identifier, personal or ignore column, the "
            "label or the split is never shown in the registry. Correct the feature spec."
        )


def _made_up_row(pipeline: PipelineSpec, types: Mapping[str, Any]) -> "pd.DataFrame":
    """One row of model inputs that is nobody's: range middles and first category codes."""
    import pandas as pd
    import pyarrow as pa

    from secure_pipeline.training.models import model_inputs

    inputs, catalog = model_inputs(pipeline)
    columns = {c.name: c for c in pipeline.schema.columns}
    values: dict[str, Any] = {}
    for name in inputs.columns:
        feature = catalog[name]
        source = columns.get(feature.source)
        if name in inputs.numeric:
            direct = feature.derivation is None and feature.name == feature.source
            bounds = (source.minimum, source.maximum) if source is not None else (None, None)
            middle = (bounds[0] + bounds[1]) / 2 if direct and None not in bounds else 0.0
            default = "float64"
        else:
            middle, default = 0, "int64"
        try:
            dtype = pa.type_for_alias(str(types.get(name))).to_pandas_dtype()
        except (KeyError, ValueError, NotImplementedError):
            dtype = default
        values[name] = pd.Series([middle]).astype(dtype)
    return pd.DataFrame(values)


def version_description(pipeline: PipelineSpec, card: str, *, limit: int = 5000) -> str:
    """The registry version's description: the spec's description, then the model card.

    MLflow's UI renders it as Markdown. Registry databases bound the field (5,000 characters),
    so a longer card is cut at a line, saying where the whole card is.
    """
    head = (pipeline.description.strip() + "\n\n") if pipeline.description else ""
    text = head + card
    if len(text) <= limit:
        return text
    note = f"\n\n… (cut; the whole card is {CARD_FILE} in the signed bundle and the run)"
    cut = text[: limit - len(note)]
    return cut[: cut.rfind("\n") if "\n" in cut else len(cut)] + note


def bundle_files(directory: Path) -> list[tuple[str, Path]]:
    """Every file of a bundle as ``(relative POSIX path, path)``, sorted by relative path."""
    import os

    found = []
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root, name)
            if path.is_file():
                found.append((path.relative_to(directory).as_posix(), path))
    return sorted(found)


def bundle_digest(directory: Path, files: list[tuple[str, Path]] | None = None) -> str:
    """SHA-256 over the sorted (path, file digest) list of a bundle, signature excluded.

    Args:
        directory: The bundle.
        files: Its files, when the caller listed them already (`bundle_files`).
    """
    entries = [
        f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}"
        for name, path in (files if files is not None else bundle_files(directory))
        if name != SIGNATURE_FILE
    ]
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def write_bundle(
    directory: Path,
    model_bytes: bytes,
    lineage: Mapping[str, Any],
    card: str,
    evidence: Mapping[str, bytes],
    interface: ModelInterface | None = None,
    onnx: bytes | None = None,
) -> None:
    """Write an (unsigned) bundle: MLflow model directory, lineage, card, signed verdicts.

    The MLflow files are written by MLflow's sklearn flavor (skops serialization, explicit
    trusted types), then the model file is replaced by the exact bytes the checks judged.
    With an ``interface``, the signature goes into ``MLmodel`` and the example into
    ``input_example.json`` and ``serving_input_example.json`` (JSON: MLflow writes a frame
    example in its split orientation), all before the bundle is signed.
    """
    import re

    from secure_pipeline import environment as env

    env.configure_mlflow()  # before MLflow is imported: pickle deserialization stays off
    import mlflow.sklearn

    from secure_pipeline.training.serialization import allowed_types, load_model

    # The lineage was just built from the pipeline spec by the caller (not read from a record
    # someone could have written): its declared types are the spec's model.trusted_types.
    declared = lineage["model"].get("declared_trusted_types", [])
    mlflow.sklearn.save_model(
        load_model(model_bytes, trusted=declared),
        str(directory),
        serialization_format="skops",
        skops_trusted_types=allowed_types(declared),
        # Listed, not inferred: inference imports the model in a subprocess.
        pip_requirements=_requirements(),
        # The signature is given, never inferred by MLflow from the example; False: none.
        signature=interface.signature if interface is not None else False,
        input_example=interface.example if interface is not None else None,
    )
    (directory / MODEL_FILE).write_bytes(model_bytes)
    if onnx is not None:
        # Signed with every other file; the lineage must record its digest (`onnx_entry`).
        (directory / ONNX_FILE).write_bytes(onnx)
    mlmodel = directory / "MLmodel"
    mlmodel.write_text(
        re.sub(
            r"model_size_bytes: \d+", f"model_size_bytes: {len(model_bytes)}", mlmodel.read_text()
        )
    )
    (directory / LINEAGE_FILE).write_bytes(json.dumps(lineage, indent=2, sort_keys=True).encode())
    (directory / CARD_FILE).write_text(card)
    for path, data in evidence.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(data)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas")]


def read_lineage(directory: Path) -> dict[str, Any]:
    """The lineage document of a (verified) bundle.

    Raises:
        LineageError: When it is missing or not JSON.
    """
    path = directory / LINEAGE_FILE
    try:
        # Read before the signature is known to hold (in parallel with it): bounded.
        if path.stat().st_size > MAX_LINEAGE_BYTES:
            raise LineageError(
                f"{path} is larger than {MAX_LINEAGE_BYTES} bytes: not a lineage document"
            )
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LineageError(f"{directory} has no readable {LINEAGE_FILE}: {exc}") from None


def verify_lineage(
    directory: Path,
    lineage: Mapping[str, Any],
    *,
    trust: TrustPolicy,
    store: SnapshotStore | None,
    pipeline: PipelineSpec | None,
) -> list[str]:
    """Check a bundle's lineage and its signed verdicts; return every problem (empty: holds).

    Args:
        directory: The bundle (signature already verified).
        lineage: Its lineage document.
        trust: The trust policy: which identity's signature each verdict needs.
        store: The snapshot store, to re-hash every referenced snapshot and to find later
            verdicts overturning the bundle's (skipped when None: offline verification).
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
    partitioned = isinstance(data, Mapping) and "window" in data
    if pipeline is not None and partitioned != (pipeline.source.partitions is not None):
        problems.append(
            "the lineage names "
            + ("a training window of days" if partitioned else "one unpartitioned dataset")
            + f", but pipeline {pipeline.name!r} is "
            + ("not " if pipeline.source.partitions is None else "")
            + "partitioned today: retrain it under today's spec"
        )
    if partitioned:
        problems.extend(_window_problems(lineage))
    elif set(data) != set(DATA_STAGES):
        problems.append(
            f"the lineage must name the raw, validated and features snapshots, found {sorted(data)}"
        )
    snapshots = lineage_snapshots(lineage)
    # Each subject by (stage, partition): a day's verdicts judge that day's snapshots only.
    subjects: dict[tuple[str, str | None], Any] = {("model", None): model.get("sha256")}
    assets: dict[tuple[str, str | None], Any] = {("model", None): model.get("asset")}
    for stage, day, entry in snapshots:
        subjects[(stage, day)] = entry.get("sha256") if isinstance(entry, Mapping) else None
        assets[(stage, day)] = entry.get("asset") if isinstance(entry, Mapping) else None
    for (stage, day), digest in subjects.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            where = f" of {day}" if day is not None else ""
            problems.append(f"the lineage gives no valid digest for the {stage} snapshot{where}")
    try:
        required = required_checks(trust)
    except LineageError as exc:
        return [*problems, str(exc)]
    # Every stage of every day the lineage names needs its verdicts, present or not.
    days = sorted({day for _stage, day, _entry in snapshots}, key=str) or [None]
    stages = [("model", None), *((stage, day) for day in days for stage in DATA_STAGES)]
    wanted = {(stage, name, day) for stage, day in stages for name in required.get(stage, ())}
    if not onnx_proved(lineage):
        wanted.discard(("model", ONNX_EQUIVALENT, None))
    checks = list(lineage.get("checks", []))
    recorded = [(c.get("stage"), c.get("check"), c.get("partition")) for c in checks]
    for stage, name, day in sorted(wanted - set(recorded), key=str):
        where = f", {day}" if day is not None else ""
        problems.append(f"the lineage records no verdict of {name} ({stage}{where})")
    if len(recorded) != len(set(recorded)):
        problems.append("the lineage records a check more than once")
    judged: list[tuple[Mapping[str, Any], attestations.Attestation]] = []
    for check in checks:
        key = (check.get("stage"), check.get("check"), check.get("partition"))
        if key not in wanted:
            problems.append(f"the lineage records an unknown verdict {check.get('check')!r}")
            continue
        attestation, problem = _bundle_verdict(
            directory, check, trust, subjects, assets, lineage.get("policy_sha256")
        )
        if problem:
            problems.append(problem)
        elif attestation is not None:
            judged.append((check, attestation))
    problems.extend(_onnx_problems(directory, lineage, judged))
    problems.extend(verdict_problems(checks))
    if pipeline is not None and lineage.get("policy_sha256") != policy_fingerprint(pipeline):
        problems.append(
            "the model was judged under a different policy than today's "
            f"({str(lineage.get('policy_sha256'))[:12]} vs {policy_fingerprint(pipeline)[:12]}); "
            "re-run its checks under today's policy before it may be promoted or served"
        )
    if store is not None:
        for stage, _day, snap in [("model", None, model), *snapshots]:
            try:
                if stage == "raw":  # the raw snapshot is a fileset index
                    index = json.loads(store.read_bytes((snap["key"], snap["sha256"])))
                    members = [(m["key"], m["sha256"]) for m in index["files"].values()]
                else:
                    members = [(snap["key"], snap["sha256"])]
                for member in members:
                    _check_snapshot(store, member)
            except ErasedError as exc:
                problems.append(f"{ERASED_LINEAGE}{snap.get('key')}: {exc}")
            except (IntegrityError, KeyError, ValueError, TypeError) as exc:
                problems.append(f"lineage snapshot {snap.get('key')}: {exc}")
        problems.extend(_overturned(store, trust, judged))
    return problems


def _onnx_problems(
    directory: Path,
    lineage: Mapping[str, Any],
    judged: list[tuple[Mapping[str, Any], attestations.Attestation]],
) -> list[str]:
    """The ONNX file is exactly the one the lineage records and the signed verdict judged.

    A recorded ONNX file that is missing or changed fails: serving must never fall back to the
    skops file silently, which would hide the tampering. The digest must be the one the train
    identity's ``onnx_equivalent`` verdict names (the copy it proved on the evaluation rows),
    and a bundle whose verdict names no copy holds none.
    """
    entry = lineage.get(ONNX_FILE)
    path = directory / ONNX_FILE
    mine = ("model", ONNX_EQUIVALENT)
    proved = [a for c, a in judged if (c.get("stage"), c.get("check")) == mine]
    named = proved[0].predicate.get("metrics", {}).get("onnx_sha256") if proved else None
    if entry is None:
        problems = (
            [f"the bundle holds {ONNX_FILE} but the lineage records none: remove it or re-register"]
            if path.exists()
            else []
        )
        if named is not None:
            problems.append(
                f"the {ONNX_EQUIVALENT} verdict proved ONNX copy {str(named)[:12]}, which the "
                "lineage does not record"
            )
        return problems
    if not isinstance(entry, Mapping) or not _HEX64.fullmatch(str(entry.get("sha256"))):
        return [f"the lineage's {ONNX_FILE} entry gives no valid sha256"]
    problems = []
    if proved and named != entry["sha256"]:
        problems.append(
            f"the lineage's {ONNX_FILE} ({entry['sha256'][:12]}) is not the copy the signed "
            f"{ONNX_EQUIVALENT} verdict proved equivalent ({str(named)[:12]})"
        )
    if not path.is_file():
        return [*problems, f"the lineage records {ONNX_FILE} but the bundle has none"]
    if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
        problems.append(f"{ONNX_FILE} does not hash to the lineage's ONNX digest {entry['sha256']}")
    return problems


def _check_snapshot(store: SnapshotStore, member: tuple[str, str]) -> None:
    """A lineage snapshot is still there, and readable.

    A plaintext snapshot is read and hashed. An encrypted one (rows that identify people) is
    checked sealed: its header is read and its data key must not have been destroyed, so a
    verifier that may not decrypt training data (the model server) still learns that the model
    was trained on erased data. Whoever decrypts it (training, the checks) verifies its digest.

    Raises:
        IntegrityError: Missing, altered, or erased (`ErasedError`).
    """
    key, digest = member
    info = store.encryption_info(key)
    if info is None:
        store.read_bytes((key, digest))
    elif store.shredded(key, info):
        raise ErasedError(
            f"snapshot {store.uri(key)} was erased (its data key was destroyed): the model was "
            "trained on data that no longer exists; retrain it on the current snapshots",
            provider=info.provider,
            key_id=info.key_id,
        )


def _bundle_verdict(
    directory: Path,
    check: Mapping[str, Any],
    trust: TrustPolicy,
    subjects: Mapping[tuple[str, str | None], Any],
    assets: Mapping[tuple[str, str | None], Any],
    policy_sha256: Any,
) -> tuple[attestations.Attestation | None, str | None]:
    """Verify one verdict of the lineage against the envelope in the bundle."""
    stage, name = str(check.get("stage")), str(check.get("check"))
    day = check.get("partition")
    label = f"the verdict of {name} on {check.get('asset')}" + (f" {day}" if day else "")
    expected = subjects.get((stage, day))
    if check.get("subject") != expected or check.get("asset") != assets.get((stage, day)):
        return None, (
            f"{name} judged {str(check.get('subject'))[:12]} of {check.get('asset')}, not the "
            f"{stage} snapshot {str(expected)[:12]} of this model" + (f" for {day}" if day else "")
        )
    path = directory / str(check.get("attestation", ""))
    try:
        if check.get("attestation") != _evidence_file(stage, name, day):
            raise FileNotFoundError(path)
        data = path.read_bytes()
    except OSError:
        return None, f"{label} has no signed attestation in the bundle"
    if sha256_hex(data) != check.get("attestation_sha256"):
        return None, f"{label}: {check.get('attestation')} is not the attestation the lineage cites"
    identity = VERDICT_IDENTITY[stage]
    try:
        attestation = attestations.open_envelope(
            data, trust, identities=(identity,), predicate_type=attestations.VERDICT_TYPE,
            what=label,
        )  # fmt: skip
    except SignatureError as exc:
        return None, str(exc)
    predicate = attestation.predicate
    mismatched = [
        field
        for field, value in (
            ("check", name),
            ("asset", check.get("asset")),
            ("passed", bool(check.get("passed"))),
            ("severity", check.get("severity")),
            ("policy_sha256", policy_sha256),
        )
        if predicate.get(field) != value
    ]
    if attestation.subjects != {str(check.get("asset")): expected}:
        mismatched.append("subject")
    if mismatched:
        return None, (
            f"{label}: the signed attestation differs from the lineage in {', '.join(mismatched)}"
            " (a verdict signed for another check, digest or policy was replayed)"
        )
    return attestation, None


def _overturned(
    store: SnapshotStore,
    trust: TrustPolicy,
    judged: list[tuple[Mapping[str, Any], attestations.Attestation]],
) -> list[str]:
    """A later signed verdict of the same check, digest and policy that fails overturns one.

    A later verdict may pass again (the pipeline was re-run on the same data); one that does not
    let the model through means the bundle's verdict is no longer the check's last word.
    """
    problems = []
    cache: dict[tuple[str, str, str], list[attestations.Attestation]] = {}
    for check, attestation in judged:
        stage, asset, digest = str(check["stage"]), str(check["asset"]), str(check["subject"])
        if (stage, asset, digest) not in cache:
            cache[(stage, asset, digest)] = signed_verdicts(
                store, trust, stage=stage, asset=asset, digest=digest
            )[0]
        when = str(attestation.predicate.get("evaluated_at"))
        for later in cache[(stage, asset, digest)]:
            predicate = later.predicate
            if (
                predicate.get("check") != check["check"]
                or predicate.get("policy_sha256") != attestation.predicate.get("policy_sha256")
                or str(predicate.get("evaluated_at")) <= when
            ):
                continue
            outcome = {**check, "passed": bool(predicate.get("passed")),
                       "severity": predicate.get("severity")}  # fmt: skip
            if verdict_problems([outcome]):
                problems.append(
                    f"a later signed verdict of {check['check']} on {digest[:12]} (at "
                    f"{predicate.get('evaluated_at')}) failed, overturning the one in the bundle"
                )
                break
    return problems
