"""The monitoring stage as Dagster definitions: ``live_traffic`` and its blocking live checks.

``live_traffic`` is what the served champion scored recently: on its cron it resolves the
current champion (its signed decision, the bundle verified), loads the signed live batches the
slots wrote for that model's digest in the last ``monitoring.window_hours`` (each envelope
verified as signed by the serve identity, each batch re-hashed; anything else refused and
listed), and stores a manifest of the window (batch keys and digests, counts, the champion
judged) as a content-addressed snapshot: its digest is the asset's data version and the subject
of every live verdict.

The live checks (`secure_pipeline.monitoring.live` does the arithmetic) then judge that window
against the champion's own training: its training features snapshot (named in its signed
lineage, read verified) and its scores on that snapshot's held-out rows (the model loaded
through verify-before-load, `registry.evidence.verify_reference` + `serving.loader.
load_evidence`). Each verdict is signed by the monitor identity and names the champion version
and model digest judged. They run in one step, so the window and the model are loaded once.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg

from secure_pipeline.features.assets import ChampionLineage
from secure_pipeline.names import (
    LIVE_ERROR_RATE,
    LIVE_FAIRNESS,
    LIVE_INPUT_DRIFT,
    LIVE_PERFORMANCE,
    LIVE_SCORE_DRIFT,
)
from secure_pipeline.retries import retry_transient_io
from secure_pipeline.serving.recording import parse_utc, utc_iso
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.io_manager import latest_record, recorded_snapshot, store_snapshot
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import SnapshotStore
from secure_pipeline.trust.identities import MONITOR
from secure_pipeline.trust.policy import TrustPolicy
from secure_pipeline.verdicts import verdict

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from secure_pipeline.monitoring.live import LiveOutcome

MANIFEST_VERSION = 1
# Metadata keys of a live verdict whose values are structured (shown as JSON in the UI).
_JSON_DETAILS = ("psi_by_feature", "gaps", "not_recorded", "reported_only")


def _champion(
    pipeline: PipelineSpec,
    store: SnapshotStore,
    trust: TrustPolicy,
    champion_lineage: ChampionLineage,
) -> tuple[str, dict[str, Any], str]:
    """The current champion: ``(version, verified lineage, model digest)``.

    Raises:
        dg.Failure: When there is no champion (nothing is served that could be judged).
        PolicyViolation: When the champion's bundle does not verify.
    """
    found = champion_lineage(pipeline, store, trust)
    if found is None:
        raise dg.Failure(
            f"{pipeline.names.model_name} has no champion: no signed champion decision in the "
            "store, so no served model to judge. Promote a model (the release job's gate) "
            "before live_traffic is materialized."
        )
    version, lineage = found
    return version, lineage, str(lineage["model"]["sha256"])


def _window_bounds(
    pipeline: PipelineSpec, store: SnapshotStore, trust: TrustPolicy
) -> tuple[datetime, datetime]:
    """The last ``window_hours``, but never before the champion was crowned.

    What a live check judges is the champion's own traffic since it took over: a model with
    the same digest served earlier (re-registered, or crowned again by a rollback) had
    traffic that says nothing of how it serves now.
    """
    from secure_pipeline.registry.decisions import champion, decisions
    from secure_pipeline.serving.recording import parse_utc

    until = datetime.now(UTC)
    since = until - timedelta(hours=pipeline.monitoring.window_hours)
    crowned = champion(decisions(store, trust, pipeline.names.model_name)[0])
    if crowned is not None:
        since = max(since, parse_utc(crowned.time))
    return since, until


def _training_features(
    pipeline: PipelineSpec, store: SnapshotStore, lineage: dict[str, Any], version: str
) -> "pd.DataFrame":
    """The features snapshot the champion was trained on, read verified (re-hashed).

    Raises:
        IntegrityError: When the lineage names something other than this pipeline's features.
        dg.Failure: When the snapshot was erased since.
    """
    from secure_pipeline.features.assets import champion_features
    from secure_pipeline.features.window import read_tables

    refs = champion_features(pipeline, lineage)
    for key, sha in refs:
        if store.shredded(key):
            raise dg.Failure(
                f"the features snapshot champion version {version} was trained on ({sha[:12]}) "
                "was erased: live inputs cannot be compared with it. Retrain on the current "
                "data and promote the new model."
            )
    return read_tables(store, refs)


def _reference_scores(
    pipeline: PipelineSpec, model: Any, inputs: list[str], features: "pd.DataFrame",
    lineage: dict[str, Any],
) -> tuple["np.ndarray", str]:  # fmt: skip
    """The champion's scores on the held-out rows of its training snapshot, and which rows.

    Held-out rows are the ones the model did not fit: its scores there are what it gives data
    it has not seen, which is what live traffic is. When today's spec splits the snapshot
    differently from the split the model was trained with, the held-out rows are unknown and
    every row is scored (said so in the verdict).
    """
    from secure_pipeline.training.models import split_rows

    splits = split_rows(features, pipeline)
    recorded = (lineage.get("model") or {}).get("split") or {}
    if recorded.get("rows_sha256") == splits.fingerprint():
        rows, which = splits.evaluation, "held-out rows of the training snapshot"
    else:
        rows = list(range(len(features)))
        which = "every row of the training snapshot (today's spec splits it differently)"
    frame = features[inputs].iloc[rows]
    return model.predict_proba(frame)[:, 1], which


def build_live_stage(
    pipeline: PipelineSpec, champion_lineage: ChampionLineage
) -> tuple[dg.AssetsDefinition, list[dg.AssetChecksDefinition]]:
    """Build ``live_traffic`` and its five blocking live checks.

    Args:
        pipeline: The spec (``monitoring`` settings, the policy's thresholds).
        champion_lineage: Reads the champion's verified lineage
            (`secure_pipeline.registry.evidence.champion_lineage`; passed in, as the features
            stage takes it).

    Returns:
        ``(asset, checks)``.
    """
    key = pipeline.names.live_traffic
    monitoring, policy = pipeline.monitoring, pipeline.policy
    # The monitor stage's pods: the only ones besides the code server holding the monitor key.
    op_tags = pipeline.orchestration.monitor.dagster_tags(MONITOR)

    @dg.asset(
        key=key,
        # What is judged is the traffic of the model the gate promoted: in the graph (and in a
        # whole-graph run) it comes after the promotion.
        deps=[pipeline.names.promoted_model],
        group_name="monitoring",
        kinds={"parquet"},
        owners=list(pipeline.owners) or None,
        code_version=pipeline.code_version,
        description=(
            "What the served champion scored: the signed live batches the serving slots wrote "
            f"in the last {monitoring.window_hours} h for the current champion's model digest "
            "(sampled model inputs, the sensitive columns requests carried, scores, predicted "
            "labels, prediction ids; feedback labels; request and error counts), each verified "
            "as signed by the serve identity and re-hashed; anything else is refused and "
            "listed. Stored as a manifest of the window (batch digests, counts, the champion "
            "judged) whose digest is the data version and the subject of the live checks."
        ),
        tags=pipeline.names.asset_tags("monitoring"),
        op_tags=op_tags,
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=timedelta(hours=monitoring.stale_after_hours)
        ),
    )
    @retry_transient_io(pipeline.orchestration)
    def live_traffic(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.MaterializeResult[Any]:
        from secure_pipeline.canonical import canonical_json
        from secure_pipeline.monitoring.live import labelled_rows
        from secure_pipeline.serving.recording import load_window, window_digest
        from secure_pipeline.trust.policy import trust_policy

        store, trust = snapshot_store.get_store(), trust_policy()
        version, _lineage, model_sha256 = _champion(pipeline, store, trust, champion_lineage)
        since, until = _window_bounds(pipeline, store, trust)
        window = load_window(store, trust, pipeline, since=since, until=until,
                             model_sha256=model_sha256)  # fmt: skip
        labelled = len(labelled_rows(pipeline, window.traffic, window.feedback).y_true)
        digest = window_digest(window)
        counts = {
            "rows": len(window.traffic),
            "labelled_rows": labelled,
            "feedback_rows": len(window.feedback),
            "requests": int(window.requests),
            "errors": int(window.errors),
            "refusals": int(window.refusals),
        }
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "pipeline": pipeline.name,
            "champion": {"version": str(version), "model_sha256": model_sha256},
            "window": {
                "since": utc_iso(since),
                "until": utc_iso(until),
                "sha256": digest,
            },  # fmt: skip
            "batches": sorted(
                (
                    {
                        "key": b.key,
                        "sha256": b.sha256,
                        "kind": b.kind,
                        "rows": int(b.predicate.get("rows", 0)),
                    }
                    for b in window.batches
                ),
                key=lambda b: (b["kind"], b["key"]),
            ),  # fmt: skip
            "counts": counts,
            "refused": sorted(window.refused),
        }
        ref, metadata = store_snapshot(
            snapshot_store, key, canonical_json(manifest), ext="json", fmt="json",
            run_id=context.run.run_id, code_version=pipeline.code_version, identity=MONITOR,
        )  # fmt: skip
        context.log.info(
            f"window {utc_iso(since)}..{utc_iso(until)}: {len(window.batches)} batches, "
            f"{counts['rows']} rows ({labelled} labelled), {counts['requests']} requests, "
            f"{len(window.refused)} refused; champion version {version}"
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(ref.sha256),
            metadata={
                **metadata,
                **counts,
                "batches": len(window.batches),
                "refused": dg.MetadataValue.json(sorted(window.refused)),
                "refused_count": len(window.refused),
                "window_start": utc_iso(since),
                "window_end": utc_iso(until),
                "window_sha256": digest,
                "champion_version": str(version),
                "model_sha256": model_sha256,
            },
        )

    specs = [
        dg.AssetCheckSpec(
            LIVE_INPUT_DRIFT, asset=key, blocking=True,
            description=(
                "Population stability index of every model input the slots recorded, live "
                "rows against the features snapshot the champion was trained on. Warns at PSI "
                f">= {policy.drift_warn_psi}, fails at >= {policy.drift_fail_psi}; fewer than "
                f"{monitoring.min_rows} rows cannot be judged (a warning)."
            ),
        ),
        dg.AssetCheckSpec(
            LIVE_SCORE_DRIFT, asset=key, blocking=True,
            description=(
                "Population stability index of the live scores against the champion's scores "
                "on the held-out rows of its training snapshot (the model loaded verified); "
                f"fails at >= {monitoring.score_fail_psi}."
            ),
        ),
        dg.AssetCheckSpec(
            LIVE_ERROR_RATE, asset=key, blocking=True,
            description=(
                "Share of /predict requests the slots answered with a server error (5xx) in "
                f"the window; fails above {monitoring.max_error_rate:.2%}."
            ),
        ),
        dg.AssetCheckSpec(
            LIVE_PERFORMANCE, asset=key, blocking=True,
            description=(
                "ROC AUC and balanced accuracy of the champion on the live predictions that "
                f"received a feedback label; fails below {policy.min_roc_auc} / "
                f"{policy.min_balanced_accuracy}. Fewer than {monitoring.min_labelled_rows} "
                "labels cannot be judged (a warning)."
            ),
        ),
        dg.AssetCheckSpec(
            LIVE_FAIRNESS, asset=key, blocking=True,
            description=(
                "Equalized odds per sensitive feature on the labelled live predictions "
                "(fairlearn, as the training gate: groups with fewer than "
                f"{policy.fairness_min_group_size} positives or negatives are not gated; a gap "
                "counts beyond sampling error); fails above "
                f"{policy.max_equalized_odds_difference}."
                + (
                    f" Reported only: {', '.join(policy.fairness_report_only)}."
                    if policy.fairness_report_only
                    else ""
                )
            ),
        ),
    ]  # fmt: skip

    @dg.multi_asset_check(
        specs=specs,
        name=f"{pipeline.name}_live_checks",
        description="The live checks of live_traffic, judged together on one loaded window.",
        can_subset=True,
        op_tags=op_tags,
    )
    @retry_transient_io(pipeline.orchestration)
    def live_checks(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> Iterator[dg.AssetCheckResult]:
        judged = _judge(context, snapshot_store)
        # Signed only once everything loaded and was computed: a retried step signs nothing
        # twice.
        results = [_verdict(context, snapshot_store, *judged, check) for check in
                   sorted(c.name for c in context.selected_asset_check_keys)]  # fmt: skip
        yield from results

    def _judge(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> tuple[dict[str, Any], str, dict[str, "LiveOutcome"], str]:
        import json

        from secure_pipeline.errors import IntegrityError
        from secure_pipeline.monitoring.live import judge_window
        from secure_pipeline.registry.evidence import verify_reference
        from secure_pipeline.serving.loader import load_evidence
        from secure_pipeline.serving.recording import load_window, window_digest
        from secure_pipeline.trust.policy import trust_policy

        record = latest_record(context.instance, key)
        manifest_key, subject, _ = recorded_snapshot(record, key)
        store, trust = snapshot_store.get_store(), trust_policy()
        manifest = json.loads(store.read_bytes((manifest_key, subject)))
        judged = manifest["champion"]
        version, lineage, model_sha256 = _champion(pipeline, store, trust, champion_lineage)
        if (version, model_sha256) != (judged["version"], judged["model_sha256"]):
            raise dg.Failure(
                f"the champion is version {version} ({model_sha256[:12]}), but live_traffic "
                f"recorded the window of version {judged['version']} "
                f"({judged['model_sha256'][:12]}): the champion changed since; materialize "
                "live_traffic again"
            )
        name = pipeline.names.model_name
        # Verify-before-load, with the gate's decision: the scores compared are the model's
        # that was admitted, from the very bytes that verified.
        with verify_reference(f"models:/{name}/{version}", pipeline=pipeline, trust=trust,
                              store=store, require="promoted") as evidence:  # fmt: skip
            verified = load_evidence(evidence, trusted=pipeline.model.trusted_types)
        if verified.model_sha256 != model_sha256:
            raise IntegrityError(
                f"champion version {version} loads as model {verified.model_sha256[:12]}, but "
                f"its lineage names {model_sha256[:12]}: refusing to judge another model"
            )
        window = load_window(
            store, trust, pipeline, since=parse_utc(manifest["window"]["since"]),
            until=parse_utc(manifest["window"]["until"]), model_sha256=model_sha256,
            only={b["sha256"] for b in manifest["batches"]},
        )  # fmt: skip
        # Exactly the batches live_traffic recorded (a batch written into the window's hours
        # since is judged by the next run), each verified again.
        if window_digest(window) != manifest["window"]["sha256"]:
            raise dg.Failure(
                "a live batch live_traffic recorded no longer verifies or is gone: "
                "materialize live_traffic again to judge the window as it is now"
            )
        features = _training_features(pipeline, store, lineage, version)
        scores, reference_rows = _reference_scores(
            pipeline, verified.model, verified.inputs, features, lineage
        )
        judgement = judge_window(
            pipeline, traffic=window.traffic, feedback=window.feedback,
            requests=window.requests, errors=window.errors, refusals=window.refusals,
            reference_features=features, reference_scores=scores, inputs=verified.inputs,
        )  # fmt: skip
        return manifest, subject, judgement.by_check(), reference_rows

    def _verdict(
        context: dg.AssetCheckExecutionContext,
        snapshot_store: SnapshotStoreResource,
        manifest: dict[str, Any],
        subject: str,
        outcomes: dict[str, "LiveOutcome"],
        reference_rows: str,
        check: str,
    ) -> dg.AssetCheckResult:
        outcome = outcomes[check]
        champion = manifest["champion"]
        figures = dict(outcome.figures)
        details = {
            k: dg.MetadataValue.json(v) if k in _JSON_DETAILS else v
            for k, v in outcome.details.items()
        }
        return verdict(
            snapshot_store,
            pipeline=pipeline,
            identity=MONITOR,
            run_id=context.run.run_id,
            asset_key=key,
            check_name=check,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity(outcome.severity),
            subject=subject,
            summary={
                "champion_version": champion["version"],
                "model_sha256": champion["model_sha256"],
                "window_sha256": manifest["window"]["sha256"],
                "inconclusive": outcome.inconclusive,
                **figures,
            },
            metadata={
                **figures,
                **details,
                "inconclusive": outcome.inconclusive,
                "champion_version": champion["version"],
                "model_sha256": champion["model_sha256"],
                "window_start": manifest["window"]["since"],
                "window_end": manifest["window"]["until"],
                **({"reference_scores": reference_rows} if check == LIVE_SCORE_DRIFT else {}),
            },
            description=outcome.problem,
        )

    return live_traffic, [live_checks]
