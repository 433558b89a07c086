"""The whole reference pipeline: Dagster materialization vs its stage functions called directly.

Goal: <= 1.3x the direct path's wall time.

Measured, alternating, each repetition in a fresh home (``DAGSTER_HOME`` = ``SECURE_PIPELINE_HOME``
= a new temporary directory with the repository's ``dagster.yaml``, its Dagster storage created
before timing). A fresh home is needed for a fair comparison: snapshots are content-addressed,
so a second run in the same home stores nothing new, registers version 2 and measures drift
against the champion's verified lineage instead of the first snapshot, which is other work.
Both sides therefore also pay the same first-use costs in each home: the MLflow SQLite
database and its migrations, and the development signing key.

1. In one process (imports warm, one warm-up round, 5 rounds): ``direct`` vs Dagster's
   ``execute_in_process`` of the implicit asset job (every asset and check; building the
   definitions is timed with it).
2. As commands, interpreter start-up included on both sides: ``python this_file --direct`` vs
   ``dagster asset materialize --select 'not group:monitoring' -m secure_pipeline.definitions``
   (the pipeline's stages; ``live_traffic`` judges served traffic on its own schedule; the
   same code path as ``make demo``'s stage jobs: the project's default executor, all steps in
   the run's one process), and the same command with run config only: ``multiprocess`` (one
   process per step, forked from a server that preloaded the heavy libraries; the default
   before), and ``multiprocess`` with Dagster's own ``spawn`` start method (before that).
   One round (the direct command runs first and last). Where the time goes is read from each
   run's event log (per step: worker start until STEP_START, STEP_START until success), and the
   import cost of a step process is measured in a fresh interpreter.

Wall time judges the goal; CPU time (user + system of every process involved) is shown beside
it, since it holds steady when other load shares the machine (single wall times here vary by
+-25%; the per-step-process overhead is far larger than that). Runs ~5-6 minutes on 2 cores.

The direct path does each asset's and check's work with the plain library functions, in the
same order as Dagster, on the same local snapshot store, audit trail, MLflow store and dev
signer: ingest + provenance; provenance and schema checks (reading the stored fileset again);
parse + pandera validation, quarantine and reject-rate verdict; Great Expectations; features and
drift (reference: the champion's lineage if any, else the first snapshot); training with MLflow
logging; the four ML checks, each loading model and features from the store and logging to
MLflow with its figure; lineage, model card, bundle, signing, verification and MLflow
registration; ``signature_verifies``; promotion. Every snapshot the IO manager would write is
written (same bytes, upstream digests and audit record) and every verdict is an audit record.
It skips only what exists for Dagster: the event log and materialization records, data
versions, check-result and UI metadata objects (tables, Markdown), step logs, the retry wrapper
(a no-op without failures) and reading inputs through materialization records (the direct path
holds the snapshot references it wrote and reads them back verified by digest).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOAL = 1.3
# Third-party modules the steps import lazily (found by grepping the package's imports).
# An explicit multiprocess forks steps from a forkserver that preloaded orchestration/jobs.py's
# PRELOAD_MODULES; SPAWN is the multiprocess executor as Dagster ships it.
MULTIPROCESS = {"execution": {"config": {"multiprocess": {}}}}
SPAWN = {"execution": {"config": {"multiprocess": {"start_method": {"spawn": {}}}}}}
_ISOLATED_PREFIXES = ("SECURE_PIPELINE_", "DAGSTER_PG_", "AWS_", "MLFLOW_")


# -- the direct path ----------------------------------------------------------------------------


class Direct:
    """The pipeline's work without Dagster: one run id, the store, its audit trail, timings."""

    def __init__(self) -> None:
        from secure_pipeline import environment as env
        from secure_pipeline.reference.adult import adult_pipeline
        from secure_pipeline.storage.audit import AuditLog
        from secure_pipeline.storage.local import LocalSnapshotStore

        self.pipeline = adult_pipeline()
        self.store = LocalSnapshotStore(env.secure_pipeline_home() / "store")
        self.audit = AuditLog(self.store)
        self.run_id = str(uuid.uuid4())
        self.steps: dict[str, float] = {}
        self.parsed: Any = None  # schema_conforms's (batch, report), for validated_*
        self.experiment = f"secure_pipeline/{self.pipeline.name}"

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step (named like its Dagster step key: ``adult__features``)."""
        started = time.perf_counter()
        yield
        self.steps[f"{self.pipeline.name}__{name}"] = time.perf_counter() - started

    def path(self, asset: str | list[str]) -> list[str]:
        """The store path of one of the pipeline's assets (keys carry the pipeline's name)."""
        return [self.pipeline.name, *([asset] if isinstance(asset, str) else asset)]

    def user(self, asset: str) -> str:
        """An asset's key as a user string (``adult/features``), as manifests name it."""
        return f"{self.pipeline.name}/{asset}"

    def up(self, upstream: dict[str, str]) -> dict[str, str]:
        """Upstream digests keyed by the assets' user strings, as the IO manager records them."""
        return {self.user(name): digest for name, digest in upstream.items()}

    def output(self, asset: str, data: bytes, ext: str, fmt: str, **manifest: Any) -> Any:
        """What the IO manager does with an output: store it create-only and audit it."""
        if "upstream" in manifest:
            manifest["upstream"] = self.up(manifest["upstream"])
        ref = self.store.put_bytes(self.path(asset), data, ext=ext, format=fmt,
                                   run_id=self.run_id, code_version=self.pipeline.code_version,
                                   **manifest)  # fmt: skip
        self.audit.append(
            "snapshot.stored", signer=self.signer(asset), actor=f"asset:{self.user(asset)}",
            run_id=self.run_id, subject=ref.sha256,
            details={"key": ref.key, "format": fmt, "bytes": ref.size, "new": ref.created},
        )  # fmt: skip
        return ref

    def table(self, asset: str, frame: Any, upstream: dict[str, str]) -> Any:
        """A DataFrame output, as the IO manager stores it (zstd Parquet, rows, schema)."""
        from secure_pipeline.storage.tables import schema_summary, table_to_parquet, to_arrow

        table = to_arrow(frame)
        return self.output(asset, table_to_parquet(table), "parquet", "parquet",
                           schema=schema_summary(table), upstream=upstream,
                           extra={"rows": table.num_rows})  # fmt: skip

    def frame(self, ref: Any) -> Any:
        """A stored table read back, verified."""
        from secure_pipeline.storage.tables import parquet_to_table

        return parquet_to_table(self.store.read_bytes(ref)).to_pandas()

    def signer(self, asset: str) -> Any:
        """The identity that signs an asset's records (the step's op tag in the definitions)."""
        from secure_pipeline.trust.signers import signer_for

        identity = {"trained_model": "train", "registered_model": "release",
                    "promoted_model": "gate"}.get(asset, "ingest")  # fmt: skip
        return signer_for(identity)

    def verdict(self, asset: str, check: str, passed: bool, subject: str | None,
                summary: dict[str, Any], severity: str = "ERROR") -> None:  # fmt: skip
        """A check's decision as `secure_pipeline.verdicts` writes it: a signed attestation
        stored create-only, and a signed audit record."""
        from secure_pipeline.trust import attestations
        from secure_pipeline.verdicts import verdict_statement

        signer = self.signer(asset)
        asset = self.user(asset)
        details = {"asset": asset, "check": check, "passed": passed, "severity": severity,
                   **summary}  # fmt: skip
        if subject is not None:
            document = verdict_statement(
                self.pipeline, asset=asset, check=check, subject=subject, passed=passed,
                severity=severity, summary=summary, run_id=self.run_id,
                trust_digest=signer.policy_digest,
            )  # fmt: skip
            envelope = attestations.sign(document, signer)
            details["attestation"] = attestations.store_envelope(
                self.store, "verdicts", subject, envelope
            )
        self.audit.append(
            "check.evaluated", signer=signer, actor=f"check:{asset}:{check}", run_id=self.run_id,
            subject=subject, details=details,
        )  # fmt: skip
        assert passed, f"{check} failed"

    def run(self) -> dict[str, Any]:
        """Every asset and check of the reference pipeline, in Dagster's order."""
        raw = self.ingest()
        validated = self.validate(raw)
        features = self.features(validated)
        model = self.train(features)
        self.ml_checks(model)
        registered = self.register(model)
        return self.promote(registered)

    def ingest(self) -> Any:
        """raw_adult, provenance_complete, schema_conforms."""
        from secure_pipeline import environment as env
        from secure_pipeline.ingestion.connectors import connector_for, join_location
        from secure_pipeline.ingestion.provenance import (
            ProvenanceRecord,
            provenance_document,
            provenance_problems,
        )
        from secure_pipeline.redaction import redact_uri
        from secure_pipeline.storage.snapshots import utc_now
        from secure_pipeline.validation.parsing import parse_fileset
        from secure_pipeline.validation.schema import validate_batch

        pipeline, store, source = self.pipeline, self.store, self.pipeline.source
        name = pipeline.raw_asset_name
        with self.step(name):
            location = os.environ.get(source.location_env_var or "") or source.location
            members, records = {}, []
            for source_file in source.files:
                uri = join_location(location, source_file.path)
                connector = connector_for(uri, location=location,
                                          environment=env.current_environment(),
                                          pins=source.tls_pins,
                                          read_timeout=source.read_timeout_seconds)  # fmt: skip
                retrieved_at = utc_now()
                with connector.open(uri, max_bytes=source.max_bytes) as fetched:
                    ref = store.put_stream(
                        self.path(name), fetched.chunks, ext=source.format, format=source.format,
                        max_bytes=source.max_bytes, run_id=self.run_id,
                        code_version=pipeline.code_version,
                        extra={"member": source_file.member, "source": redact_uri(uri)},
                    )  # fmt: skip
                members[source_file.member] = ref
                records.append(ProvenanceRecord(
                    member=source_file.member, uri=redact_uri(uri), connector=connector.name,
                    retrieved_at=retrieved_at, size=ref.size, sha256=ref.sha256,
                    run_id=self.run_id, schema_version=pipeline.schema.version,
                    facts=fetched.facts,
                ))  # fmt: skip
            index = store.put_fileset(self.path(name), members, run_id=self.run_id,
                                      code_version=pipeline.code_version)  # fmt: skip
            provenance = store.put_bytes(
                self.path([name, "_provenance"]),
                provenance_document(self.user(name), location, index.sha256, records),
                ext="json", format="provenance", upstream={}, run_id=self.run_id,
                code_version=pipeline.code_version,
            )  # fmt: skip
            self.audit.append(
                "ingestion.stored", signer=self.signer(name), actor=f"asset:{self.user(name)}",
                run_id=self.run_id,
                subject=index.sha256,
                details={"pipeline": pipeline.name, "source": redact_uri(location),
                         "files": {m: {"sha256": r.sha256, "bytes": r.size}
                                   for m, r in members.items()},
                         "provenance_sha256": provenance.sha256, "new": index.created},
            )  # fmt: skip
        with self.step(f"{name}_provenance_complete"):
            stored_index = json.loads(store.read_bytes(index))
            document = json.loads(store.read_bytes(provenance))
            problems = provenance_problems(document, stored_index, index_sha256=index.sha256,
                                           run_id=self.run_id,
                                           schema_version=pipeline.schema.version)  # fmt: skip
            self.verdict(name, "provenance_complete", not problems, index.sha256,
                         {"problems": len(problems)})  # fmt: skip
        with self.step(f"{name}_schema_conforms"):
            batch = parse_fileset(store.read_fileset(index), pipeline.schema)
            report = validate_batch(batch, pipeline.schema)
            # Kept for validated_*, as the stage does in one process (the same bytes).
            self.parsed = (batch, report)
            structural = bool(report.structural)
            self.verdict(name, "schema_conforms",
                         not structural and report.rejected_rows == 0, index.sha256,
                         {"rows": report.rows, "rejected_rows": report.rejected_rows,
                          "structural_problems": len(report.structural)},
                         "WARN" if report.rejected_rows and not structural else "ERROR",
                         )  # fmt: skip
        return index

    def validate(self, raw: Any) -> Any:
        """validated_adult (+ reject_rate_within_limit), expectations_met."""
        from secure_pipeline.storage.snapshots import canonical_json
        from secure_pipeline.storage.tables import table_to_parquet
        from secure_pipeline.validation.assets import _pseudonym_key
        from secure_pipeline.validation.expectations import run_expectations
        from secure_pipeline.validation.quarantine import quarantine_table
        from secure_pipeline.validation.schema import validated_rows

        pipeline, store = self.pipeline, self.store
        raw_name, name = pipeline.raw_asset_name, pipeline.validated_asset_name
        with self.step(name):
            key = _pseudonym_key(pipeline)
            store.read_fileset(raw)  # the IO manager reads (and verifies) the fileset
            batch, report = self.parsed  # schema_conforms's parse of the same bytes
            assert not report.structural
            assert report.rejected is not None
            kept = validated_rows(batch, report, pipeline.schema, key)
            quarantine = quarantine_table(batch, report, pipeline.schema, key)
            validated = self.table(name, kept, {raw_name: raw.sha256})
            store.put_bytes(self.path([name, "_quarantine"]), table_to_parquet(quarantine),
                            ext="parquet", format="parquet",
                            upstream=self.up({raw_name: raw.sha256}),
                            run_id=self.run_id, code_version=pipeline.code_version,
                            extra={"rows": quarantine.num_rows})  # fmt: skip
            self.verdict(name, "reject_rate_within_limit",
                         report.reject_rate <= pipeline.policy.max_reject_rate,
                         validated.sha256,
                         {"rows": report.rows, "rejected_rows": report.rejected_rows})  # fmt: skip
        with self.step(f"{name}_expectations_met"):
            result = run_expectations(self.frame(validated), pipeline.schema)
            store.put_bytes(
                self.path([name, "_expectations"]),
                canonical_json(json.loads(json.dumps(result.document, default=str))),
                ext="json", format="json", upstream=self.up({name: validated.sha256}),
                run_id=self.run_id, code_version=pipeline.code_version,
            )  # fmt: skip
            self.verdict(name, "expectations_met", result.success, validated.sha256,
                         {"expectations": len(result.outcomes),
                          "failed": len(result.failed)})  # fmt: skip
        return validated

    def features(self, validated: Any) -> Any:
        """features, feature_drift, poisoning_screen."""
        from secure_pipeline.canonical import canonical_json
        from secure_pipeline.features.drift import population_stability
        from secure_pipeline.features.engineering import build_features, feature_catalog
        from secure_pipeline.mlsec.poisoning import screen_document, screen_features
        from secure_pipeline.registry.evidence import champion_lineage
        from secure_pipeline.trust.policy import trust_policy

        pipeline = self.pipeline
        with self.step("features"):
            table = build_features(self.frame(validated), pipeline)
            features = self.table("features", table,
                                  {pipeline.validated_asset_name: validated.sha256})  # fmt: skip
        with self.step("features_feature_drift"):
            champion = champion_lineage(pipeline, self.store, trust_policy())
            assert champion is None  # a fresh home: the reference is the first snapshot
            current = self.frame(features)
            reference = self.frame(features)
            policy = pipeline.policy
            drift = population_stability(reference, current, feature_catalog(pipeline),
                                         policy.drift_bins)  # fmt: skip
            psi = drift[0].psi if drift else 0.0
            self.verdict("features", "feature_drift", psi < policy.drift_warn_psi,
                         features.sha256,
                         {"max_psi": round(psi, 6), "feature": drift[0].feature,
                          "reference": features.sha256},
                         "ERROR" if psi >= policy.drift_fail_psi else "WARN")  # fmt: skip
        with self.step("features_poisoning_screen"):
            result = screen_features(self.frame(features), pipeline)
            document = self.store.put_bytes(
                self.path(["features", "_poisoning"]),
                canonical_json(screen_document(result, pipeline)), ext="json", format="json",
                upstream=self.up({"features": features.sha256}), run_id=self.run_id,
                code_version=pipeline.code_version,
            )  # fmt: skip
            worst = result.worst
            share = worst.share if worst else 0.0
            self.verdict("features", "poisoning_screen",
                         share <= policy.max_suspected_poisoning, features.sha256,
                         {"screened": True, "rows": result.rows,
                          "suspected": len(result.suspected),
                          "worst_member": worst.member if worst else None,
                          "worst_member_share": round(share, 6),
                          "result": document.sha256})  # fmt: skip
        return features

    def train(self, features: Any) -> dict[str, Any]:
        """trained_model, with its MLflow run; returns its materialization metadata."""
        from secure_pipeline.storage.snapshots import sha256_hex
        from secure_pipeline.training.models import train
        from secure_pipeline.training.serialization import dump_model
        from secure_pipeline.training.tracking import tracked_run

        pipeline, spec = self.pipeline, self.pipeline.model
        policy = {k: v for k, v in vars(pipeline.policy).items() if not k.startswith("_")}
        with self.step("trained_model"):
            trained = train(self.frame(features), pipeline)
            data = dump_model(trained.model)
            model_sha = sha256_hex(data)
            with tracked_run(self.experiment, run_name=f"dagster {self.run_id[:8]}") as mlflow:
                run = mlflow.active_run()
                mlflow.log_params({
                    "estimator": spec.estimator,
                    **{f"param.{k}": v for k, v in spec.params.items()},
                    "seed": spec.seed, "holdout_fraction": spec.holdout_fraction,
                    "inputs": ",".join(trained.inputs.columns),
                })  # fmt: skip
                mlflow.log_metrics(trained.metrics)
                mlflow.set_tags({
                    "secure_pipeline.model_sha256": model_sha,
                    "secure_pipeline.features_sha256": features.sha256,
                    "secure_pipeline.dagster_run_id": self.run_id,
                    "secure_pipeline.pipeline": pipeline.name,
                })  # fmt: skip
                mlflow.log_dict(policy, "policy.json")
                mlflow_run = run.info.run_id
            self.audit.append(
                "model.trained", signer=self.signer("trained_model"),
                actor=f"asset:{self.user('trained_model')}", run_id=self.run_id,
                subject=model_sha,
                details={"pipeline": pipeline.name, "estimator": spec.estimator,
                         "features_sha256": features.sha256, "mlflow_run_id": mlflow_run,
                         "test_roc_auc": trained.metrics.get("test_roc_auc"),
                         "holdout_roc_auc": trained.metrics.get("holdout_roc_auc")},
            )  # fmt: skip
            ref = self.output("trained_model", data, "skops", "bytes",
                              upstream={"features": features.sha256})  # fmt: skip
        return {
            "ref": ref, "model_sha256": model_sha, "features_sha256": features.sha256,
            "features_key": features.key, "inputs": trained.inputs.columns,
            "split": {"seed": spec.seed, "holdout_fraction": spec.holdout_fraction,
                      "train_member": spec.train_member, "test_member": spec.test_member,
                      "rows_sha256": trained.splits.fingerprint()},
            **{k: round(v, 6) for k, v in trained.metrics.items()},
            "mlflow_run_id": mlflow_run,
        }  # fmt: skip

    def ml_checks(self, model: dict[str, Any]) -> None:
        """The four ML gates, each loading model and data itself as its step does."""
        from dataclasses import asdict

        import numpy as np

        from secure_pipeline.features.engineering import LABEL_COLUMN, feature_catalog
        from secure_pipeline.mlsec.fairness import audit_fairness
        from secure_pipeline.mlsec.plots import fairness_figure, robustness_figure
        from secure_pipeline.mlsec.privacy import evaluate_membership
        from secure_pipeline.mlsec.robustness import evaluate_robustness
        from secure_pipeline.training.models import classification_metrics, model_inputs, split_rows
        from secure_pipeline.training.serialization import load_model
        from secure_pipeline.training.tracking import log_check, tracked_run

        pipeline, policy, seed = self.pipeline, self.pipeline.policy, self.pipeline.model.seed
        sha = model["model_sha256"]

        def judge() -> tuple[Any, Any, Any, Any, Any, int]:
            loaded = load_model(self.store.read_bytes(model["ref"]), source=model["ref"].key)
            features = self.frame((model["features_key"], model["features_sha256"]))
            inputs, _ = model_inputs(pipeline)
            splits = split_rows(features, pipeline)
            assert splits.fingerprint() == model["split"]["rows_sha256"]
            x, y = features[inputs.columns], features[LABEL_COLUMN].to_numpy()
            return loaded, features, splits, x, y, len(inputs.numeric)

        def track(check: str, metrics: dict, result: dict, figure: Any = None) -> None:
            with tracked_run(self.experiment, run_id=model["mlflow_run_id"]) as mlflow:
                log_check(mlflow, check, metrics, result)
                if figure is not None:
                    mlflow.log_figure(figure, f"plots/{check}.png")

        with self.step("trained_model_adversarial_robustness"):
            loaded, _, splits, x, y, numeric = judge()
            rows, fit = splits.evaluation, splits.fit
            result = evaluate_robustness(loaded, x.iloc[rows], y[rows], numeric,
                                         epsilon=policy.robustness_epsilon,
                                         cap=policy.robustness_sample_cap, seed=seed,
                                         surrogate_x=x.iloc[fit], surrogate_y=y[fit])  # fmt: skip
            numbers = {"clean_accuracy": result.clean_accuracy,
                       "adversarial_accuracy": result.adversarial_accuracy,
                       "accuracy_drop": result.drop}  # fmt: skip
            track("adversarial_robustness", numbers, asdict(result), robustness_figure(result))
            self.verdict("trained_model", "adversarial_robustness",
                         result.drop <= policy.max_robustness_drop, sha,
                         {k: round(v, 6) for k, v in numbers.items()})  # fmt: skip
        with self.step("trained_model_fairness_audit"):
            loaded, features, splits, x, y, _ = judge()
            rows = splits.evaluation
            catalog = {f.name: f for f in feature_catalog(pipeline)}
            sensitive = {}
            for name in pipeline.sensitive_features:
                column = f"{name}_band" if name in pipeline.features.bands else name
                codes = features[column].to_numpy()[rows]
                sensitive[name] = (column, codes, catalog[column].categories)
            fairness = audit_fairness(
                y[rows], loaded.predict(x.iloc[rows]), sensitive,
                max_equalized_odds_difference=policy.max_equalized_odds_difference,
                max_parity_amplification=policy.max_parity_amplification,
                min_group_size=policy.fairness_min_group_size,
                confidence=policy.fairness_confidence, report_only=policy.fairness_report_only,
            )  # fmt: skip
            groups = [
                {"feature": a.feature, "group": g.group, "rows": g.rows,
                 "positives": g.positives, "selection_rate": round(g.selection_rate, 4),
                 "tpr": round(g.true_positive_rate, 4), "fpr": round(g.false_positive_rate, 4),
                 "accuracy": round(g.accuracy, 4), "gated": g.gated}
                for a in fairness.audits for g in a.groups
            ]  # fmt: skip
            summary = {
                a.feature: {"gating": a.gating,
                            "equalized_odds_difference": round(a.equalized_odds_difference, 4),
                            "gap_beyond_noise": round(a.gap_beyond_noise, 4),
                            "demographic_parity_difference":
                                round(a.demographic_parity_difference, 4),
                            "label_parity_difference": round(a.label_parity_difference, 4),
                            "problems": a.problems}
                for a in fairness.audits
            }  # fmt: skip
            metrics = {
                f"{a.feature}.{k}": v for a in fairness.audits
                for k, v in (("equalized_odds_difference", a.equalized_odds_difference),
                             ("demographic_parity_difference", a.demographic_parity_difference))
            }  # fmt: skip
            track("fairness_audit", metrics, {"features": summary, "groups": groups},
                  fairness_figure(fairness))  # fmt: skip
            self.verdict("trained_model", "fairness_audit", fairness.passed, sha,
                         {"features": {k: {"problems": len(v["problems"])}
                                       for k, v in summary.items()}})  # fmt: skip
        with self.step("trained_model_membership_inference_risk"):
            loaded, _, splits, x, y, _ = judge()
            members = splits.fit
            others = np.concatenate([splits.holdout, splits.test])
            privacy = evaluate_membership(loaded, x.iloc[members], y[members], x.iloc[others],
                                          y[others], cap=policy.privacy_sample_cap,
                                          seed=seed)  # fmt: skip
            numbers = {"attack_auc": privacy.auc, "attack_advantage": privacy.advantage}
            track("membership_inference_risk", numbers, asdict(privacy))
            self.verdict("trained_model", "membership_inference_risk",
                         privacy.auc <= policy.max_membership_auc
                         and privacy.advantage <= policy.max_membership_advantage, sha,
                         {k: round(v, 6) for k, v in numbers.items()})  # fmt: skip
        with self.step("trained_model_performance_meets_policy"):
            loaded, _, splits, x, y, _ = judge()
            rows = splits.evaluation
            scores = loaded.predict_proba(x.iloc[rows])[:, 1]
            metrics = classification_metrics(y[rows], scores)
            evaluated = "external test set" if len(splits.test) else "holdout"
            track("performance_meets_policy", metrics, {"evaluated_on": evaluated, **metrics})
            self.verdict("trained_model", "performance_meets_policy",
                         metrics["roc_auc"] >= policy.min_roc_auc
                         and metrics["balanced_accuracy"] >= policy.min_balanced_accuracy, sha,
                         {k: round(v, 6) for k, v in metrics.items()})  # fmt: skip
        with self.step("trained_model_onnx_equivalent"):
            from secure_pipeline.training.onnx import convert, equivalence

            loaded, _, splits, x, _, _ = judge()
            onnx, _ = convert(loaded, pipeline)
            summary: dict[str, Any] = {"onnx_sha256": None}
            if onnx is not None:
                compared = equivalence(loaded, onnx, x.iloc[splits.evaluation].reset_index(
                    drop=True))  # fmt: skip
                assert compared["agrees"], compared
                ref = self.store.put_bytes(
                    self.path(["trained_model", "_onnx"]), onnx, ext="onnx", format="onnx",
                    run_id=self.run_id,
                )  # fmt: skip
                summary = {"onnx_sha256": ref.sha256, **{k: compared[k] for k in (
                    "rows", "max_abs_diff", "label_disagreements", "tolerance")}}  # fmt: skip
                track("onnx_equivalent", {"max_abs_diff": compared["max_abs_diff"]}, summary)
            self.verdict("trained_model", "onnx_equivalent", True, sha, summary)

    def register(self, model: dict[str, Any]) -> Any:
        """registered_model (bundle, signing, verification, MLflow), signature_verifies."""
        import mlflow

        from secure_pipeline.registry.bundle import (
            LINEAGE_FILE,
            ONNX_FILE,
            build_lineage,
            model_card,
            model_interface,
            onnx_copy,
            onnx_entry,
            verdict_problems,
            write_bundle,
        )
        from secure_pipeline.registry.mlflow_registry import register_bundle
        from secure_pipeline.registry.registration import record_registration
        from secure_pipeline.registry.signing import (
            SIGNATURE_FILE,
            sign_bundle,
            signer_from_environment,
        )
        from secure_pipeline.registry.verification import verify_bundle_dir
        from secure_pipeline.storage.snapshots import canonical_json, sha256_hex
        from secure_pipeline.training.tracking import tracking_uri
        from secure_pipeline.trust.policy import trust_policy

        pipeline, store, audit, run = self.pipeline, self.store, self.audit, self.run_id
        with self.step("registered_model"):
            model_sha = model["model_sha256"]
            model_bytes = store.read_bytes(model["ref"])
            signer, trust = signer_from_environment(), trust_policy()
            lineage, evidence = build_lineage(pipeline, store, trust, model_sha256=model_sha,
                                              model_metadata=model, run_id=run)  # fmt: skip
            assert not verdict_problems(lineage["checks"])
            # The ONNX copy the signed onnx_equivalent verdict names, as registration reads it.
            onnx, compared = onnx_copy(pipeline, store, trust, lineage, evidence)
            if onnx is not None:
                lineage[ONNX_FILE] = {**onnx_entry(onnx, pipeline), "equivalence": compared}
            mlflow.set_tracking_uri(tracking_uri())
            results = {
                name: mlflow.artifacts.load_dict(
                    f"runs:/{model['mlflow_run_id']}/checks/{name}.json"
                )
                for name in ("adversarial_robustness", "membership_inference_risk",
                             "fairness_audit")
            }  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="bundle-") as temporary:
                bundle = Path(temporary) / "bundle"
                bundle.mkdir()
                interface = model_interface(pipeline, model_bytes, store,
                                            lineage["data"]["features"])  # fmt: skip
                write_bundle(bundle, model_bytes, lineage, model_card(pipeline, lineage, results),
                             evidence, interface, onnx)  # fmt: skip
                sign_bundle(bundle, signer)
                verification = verify_bundle_dir(bundle, trust=trust, pipeline=pipeline,
                                                 store=store)  # fmt: skip
                assert verification.ok, verification.problems
                lineage_bytes = (bundle / LINEAGE_FILE).read_bytes()
                signature = (bundle / SIGNATURE_FILE).read_bytes()
                tags = {"model_sha256": model_sha,
                        "bundle_digest": str(verification.bundle_digest),
                        "lineage_sha256": sha256_hex(lineage_bytes), "signer": signer.name,
                        "dagster_run_id": run}  # fmt: skip
                version, source = register_bundle(
                    self.experiment, model["mlflow_run_id"], pipeline.name, bundle, tags,
                    bundle_digest=tags["bundle_digest"],
                )  # fmt: skip
            release = self.signer("registered_model")
            record_registration(
                store, release, pipeline=pipeline.name, name=pipeline.name, version=version,
                source=source, model_sha256=model_sha, bundle_digest=tags["bundle_digest"],
                lineage_sha256=tags["lineage_sha256"],
                runs={"mlflow_run_id": model["mlflow_run_id"], "dagster_run_id": run},
            )  # fmt: skip
            kept_lineage = store.put_bytes(self.path(["registered_model", "_lineage"]),
                                           lineage_bytes, ext="json", format="json",
                                           run_id=run)  # fmt: skip
            kept_signature = store.put_bytes(self.path(["registered_model", "_signature"]),
                                             signature, ext="sig", format="sigstore",
                                             run_id=run)  # fmt: skip
            audit.append("model.registered", signer=release,
                         actor=f"asset:{self.user('registered_model')}",
                         run_id=run,
                         subject=model_sha,
                         details={"name": pipeline.name, "version": version, **tags})  # fmt: skip
            value = {
                "name": pipeline.name,
                "version": version,
                **tags,
                "lineage_key": kept_lineage.key,
                "signature_key": kept_signature.key,
            }
            ref = self.output("registered_model", canonical_json(value), "json", "json",
                              upstream={"trained_model": model_sha})  # fmt: skip
        with self.step("registered_model_signature_verifies"):
            value = json.loads(store.read_bytes(ref))
            from secure_pipeline.registry.evidence import verify_reference
            from secure_pipeline.trust.policy import trust_policy

            with verify_reference(f"models:/{value['name']}/{value['version']}",
                                  pipeline=pipeline, trust=trust_policy(),
                                  store=store) as evidence:  # fmt: skip
                checked = evidence.verification
            self.verdict("registered_model", "signature_verifies", checked.ok,
                         checked.model_sha256 or value.get("model_sha256"),
                         {"version": value["version"], "signer": checked.signer})  # fmt: skip
        return ref

    def promote(self, registered: Any) -> dict[str, Any]:
        """promoted_model."""
        from secure_pipeline.promotion.gate import promote
        from secure_pipeline.storage.snapshots import canonical_json

        with self.step("promoted_model"):
            value = json.loads(self.store.read_bytes(registered))
            outcome = promote(self.pipeline, value["name"], value["version"], store=self.store,
                              audit=self.audit, actor=f"asset:{self.user('promoted_model')}",
                              run_id=self.run_id)  # fmt: skip
            self.output("promoted_model", canonical_json(json.loads(json.dumps(outcome))), "json",
                        "json", upstream={"registered_model": registered.sha256})  # fmt: skip
        assert outcome["champion"] == "1", outcome
        return outcome


# -- homes, variants, event logs ----------------------------------------------------------------


def fresh_home(root: Path) -> Path:
    """A new home with the repository's dagster.yaml and its Dagster storage already created."""
    import dagster as dg

    home = Path(tempfile.mkdtemp(dir=root))
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = home_env(home)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        dg.DagsterInstance.from_config(str(home)).dispose()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return home


def home_env(home: Path) -> dict[str, str]:
    """This process's environment, cleared of project settings, pointing at ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_ISOLATED_PREFIXES) and k != "DAGSTER_HOME"}  # fmt: skip
    env.update(DAGSTER_HOME=str(home), SECURE_PIPELINE_HOME=str(home))
    return env


@contextmanager
def in_home(home: Path) -> Iterator[None]:
    """Run in-process code with ``home`` as DAGSTER_HOME and SECURE_PIPELINE_HOME."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(home_env(home))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def dagster_in_process(home: Path) -> str:
    """Materialize every asset with its checks in this process; the run id."""
    import dagster as dg

    from secure_pipeline.environment import Environment
    from secure_pipeline.reference.adult import adult_pipeline

    with in_home(home), dg.DagsterInstance.from_config(str(home)) as instance:
        job = adult_pipeline().build_definitions(Environment.LOCAL)
        # The pipeline's stages; live_traffic judges served traffic on its own schedule.
        keys = [k for k in job.resolve_asset_graph().get_all_asset_keys()
                if k.path[-1] != "live_traffic"]  # fmt: skip
        result = job.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, raise_on_error=True, asset_selection=keys
        )
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 12, [c.asset_check_key for c in checks]
        assert all(c.passed for c in checks), [c.asset_check_key for c in checks if not c.passed]
        return result.run_id


def direct_in_process(home: Path) -> dict[str, float]:
    """The direct path in this process; its step times."""
    with in_home(home):
        direct = Direct()
        direct.run()
        return direct.steps


def cpu_seconds(who: int) -> float:
    """User + system CPU time of this process (RUSAGE_SELF) or its reaped descendants."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so their CPU time is counted when reaped.

    The multiprocess executor's forkserver is left running by the command and reaps the step
    processes itself: without this its CPU, and theirs, would never reach RUSAGE_CHILDREN.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans(deadline: float = 10.0) -> None:
    """Wait for adopted descendants (a lingering forkserver) to exit, for their CPU time."""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            time.sleep(0.05)


def command(home: Path, args: list[str]) -> tuple[float, float]:
    """Run a command in ``home``; its wall time and the CPU time of it and its processes."""
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=home_env(home), cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    reap_orphans()
    if done.returncode:
        raise RuntimeError(f"{args[:3]} failed:\n{done.stderr[-3000:]}")
    return seconds, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def materialize_args(run_config: dict | None = None) -> list[str]:
    """The ``dagster asset materialize`` command line, with optional run config."""
    args = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
            "--select", "not group:monitoring", "-m", "secure_pipeline.definitions"]  # fmt: skip
    return args + (["--config-json", json.dumps(run_config)] if run_config else [])


def step_times(home: Path) -> dict[str, Any]:
    """Per step of the home's only run: worker start-up and execution, from its event log."""
    import dagster as dg

    with in_home(home), dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        marks: dict[str, dict[str, float]] = {}
        run_marks: dict[str, float] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type.name  # (the enum's values are legacy PIPELINE_* strings)
            if event.step_key:
                marks.setdefault(event.step_key, {}).setdefault(kind, entry.timestamp)
            elif kind in ("RUN_START", "RUN_SUCCESS"):
                run_marks[kind] = entry.timestamp
    steps = {}
    for key, mark in marks.items():
        start = mark.get("STEP_WORKER_STARTING", mark["STEP_START"])
        steps[key] = {
            "launch": mark["STEP_START"] - start,
            "compute": mark["STEP_SUCCESS"] - mark["STEP_START"],
        }
    return {"steps": steps, "run": run_marks["RUN_SUCCESS"] - run_marks["RUN_START"]}


def check_same_steps(direct: dict[str, float], home: Path) -> None:
    """Refuse to compare when Dagster ran steps the direct path does not do, or vice versa.

    Raises:
        SystemExit: When the pipeline's graph no longer matches `Direct`.
    """
    dagster = set(step_times(home)["steps"])
    if dagster != set(direct):
        raise SystemExit(
            "the reference pipeline's steps changed; update Direct before comparing. "
            f"Only in Dagster: {sorted(dagster - set(direct))}; "
            f"only in Direct: {sorted(set(direct) - dagster)}"
        )


def import_costs() -> list[tuple[str, float]]:
    """Cumulative import time of what a step process loads, in a fresh interpreter."""
    groups = [
        ("dagster + secure_pipeline.definitions", "import dagster, secure_pipeline.definitions"),
        ("pandas + pyarrow", "import pandas, pyarrow.parquet"),
        ("pandera", "import pandera.pandas"),
        ("great_expectations", "import great_expectations, great_expectations.expectations"),
        ("scikit-learn", "import sklearn.linear_model, sklearn.pipeline, sklearn.compose"),
        ("skops", "import skops.io"),
        ("mlflow (+ mlflow.sklearn)", "import mlflow, mlflow.sklearn"),
        ("ART", "import art.attacks.evasion, art.estimators.classification"),
        ("fairlearn + matplotlib", "import fairlearn.metrics, matplotlib"),
        ("model_signing", "import model_signing.signing, model_signing.verifying"),
    ]
    code = "import time, json\nout = []\n" + "".join(
        f"t = time.perf_counter()\n{stmt}\nout.append(time.perf_counter() - t)\n"
        for _, stmt in groups
    ) + "print(json.dumps(out))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(zip([g for g, _ in groups], json.loads(done.stdout), strict=True))


# -- reporting ----------------------------------------------------------------------------------


def ratio_line(
    name: str, samples: list[tuple[float, float]], base: list[tuple[float, float]], goal: bool
) -> str:
    """Median wall and CPU time, their ratios to the baseline's, and the goal verdict (wall)."""
    wall, cpu = (statistics.median(s[i] for s in samples) for i in (0, 1))
    base_wall, base_cpu = (statistics.median(s[i] for s in base) for i in (0, 1))
    ratio = wall / base_wall
    verdict = f"  {'meets' if ratio <= GOAL else 'MISSES'} <= {GOAL}x" if goal else ""
    return (
        f"  {name:<42} wall {wall:6.1f} s {ratio:5.2f}x | CPU {cpu:6.1f} s "
        f"{cpu / base_cpu:5.2f}x{verdict}"
    )


def breakdown(direct: dict[str, float], inproc: dict[str, Any], runs: dict[str, Any]) -> None:
    """Per step: direct, Dagster in-process, and (start-up + execution) under each executor."""
    names = list(runs)
    header = "".join(f" | {n:^19}" for n in names)
    print(f"\n  {'step':<40} {'direct':>6} {'in-proc':>7}{header}")
    print(f"  {'':<40} {'':>6} {'':>7}" + " | start-up  execute" * len(names))
    totals = {n: [0.0, 0.0] for n in names}
    for step in sorted(inproc["steps"], key=lambda s: list(direct).index(s)):
        cells = ""
        for n in names:
            times = runs[n]["steps"][step]
            totals[n][0] += times["launch"]
            totals[n][1] += times["compute"]
            cells += f" | {times['launch']:7.1f}  {times['compute']:7.1f}"
        print(f"  {step:<40} {direct[step]:6.1f} {inproc['steps'][step]['compute']:7.1f}{cells}")
    cells = "".join(f" | {totals[n][0]:7.1f}  {totals[n][1]:7.1f}" for n in names)
    compute = sum(s["compute"] for s in inproc["steps"].values())
    print(f"  {'sum over steps':<40} {sum(direct.values()):6.1f} {compute:7.1f}{cells}")
    cells = "".join(f" | {runs[n]['run']:16.1f}  " for n in names)
    print(f"  {'run wall (RUN_START to RUN_SUCCESS)':<40} {'':>6} {inproc['run']:7.1f}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="in-process rounds (after 1 warm-up)"
    )
    parser.add_argument("--cli-repeats", type=int, default=1, help="command rounds")
    parser.add_argument("--direct", action="store_true", help="(internal) run the direct path")
    options = parser.parse_args()
    if options.direct:
        direct = Direct()
        direct.run()
        print(json.dumps(direct.steps))
        return

    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        # 1. in one process
        times: dict[str, list[tuple[float, float]]] = {"direct": [], "dagster in-process": []}
        last: dict[str, Any] = {}
        for round_ in range(options.repeats + 1):
            order = list(times) if round_ % 2 == 0 else list(reversed(times))
            for name in order:
                home = fresh_home(root)
                cpu = cpu_seconds(resource.RUSAGE_SELF)
                started = time.perf_counter()
                if name == "direct":
                    last["direct"] = direct_in_process(home)
                else:
                    dagster_in_process(home)
                    last["in-process home"] = home
                sample = (time.perf_counter() - started, cpu_seconds(resource.RUSAGE_SELF) - cpu)
                if round_:  # round 0 warms imports and first-use caches up
                    times[name].append(sample)
                print(f"  round {round_}: {name} {sample[0]:.1f} s (CPU {sample[1]:.1f} s)"
                      f"{', warm-up, not counted' if not round_ else ''}", flush=True)  # fmt: skip
            if not round_:
                check_same_steps(last["direct"], last["in-process home"])
        base = times["direct"]
        print(f"\nin one process, imports warm (median of {options.repeats} rounds, fresh home "
              "each; CPU time shrugs off other load on the machine):")  # fmt: skip
        print(ratio_line("direct (plain library calls)", base, base, False))
        print(ratio_line("dagster execute_in_process (all + checks)",
                         times["dagster in-process"], base, True))  # fmt: skip

        # 2. as commands: interpreter start-up, imports and per-step processes included
        if not become_subreaper():
            print("  (CPU of a forkserver's step processes is not counted on this system)")
        script = [sys.executable, str(Path(__file__).resolve()), "--direct"]
        variants: dict[str, Callable[[Path], tuple[float, float]]] = {
            "python bench --direct": lambda h: command(h, script),
            "dagster asset materialize (default)": lambda h: command(h, materialize_args()),
            "  same, multiprocess (forkserver)": lambda h: command(
                h, materialize_args(MULTIPROCESS)
            ),
            "  same, spawn (Dagster's own default)": lambda h: command(h, materialize_args(SPAWN)),
        }
        cli: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        homes: dict[str, Path] = {}
        for round_ in range(options.cli_repeats):
            names = list(variants) + (["python bench --direct"] if round_ == 0 else [])
            for name in names if round_ % 2 == 0 else reversed(names):
                homes[name] = fresh_home(root)
                cli[name].append(variants[name](homes[name]))
                wall, cpu = cli[name][-1]
                print(f"  {name.strip()}: {wall:.1f} s (CPU {cpu:.1f} s)", flush=True)
        base = cli["python bench --direct"]
        print("\nas commands (fresh interpreter and home each; 'direct' run before and after; "
              "CPU of all the command's processes):")  # fmt: skip
        print(ratio_line("python bench_pipeline_overhead.py --direct", base, base, False))
        for name in list(cli)[1:]:
            print(ratio_line(name, cli[name], base, True))

        # where the time goes
        print(
            "\nwhere the time goes (seconds; last run of each; start-up = worker launch to "
            "STEP_START: process start, imports, code location load)"
        )
        commands = {"forkserver+preload": "  same, multiprocess (forkserver)",
                    "spawn": "  same, spawn (Dagster's own default)"}  # fmt: skip
        runs = {name: step_times(homes[variant]) for name, variant in commands.items()}
        breakdown(last["direct"], step_times(last["in-process home"]), runs)
        for name, run in runs.items():
            launches = [s["launch"] for s in run["steps"].values()]
            print(f"  {name}: {len(launches)} step processes, start-up {sum(launches):.1f} s "
                  f"summed (median {statistics.median(launches):.1f} s each); command wall "
                  f"- run wall = {cli[commands[name]][-1][0] - run['run']:.1f} s (interpreter, "
                  "imports, code location load, teardown)")  # fmt: skip
        print("  (with forkserver, the first step's start-up includes the forkserver's preload)")
        print("\nimports a step process pays (fresh interpreter, cumulative groups):")
        costs = import_costs()
        for group, seconds in costs:
            print(f"  {group:<40} {seconds:5.2f} s")
        print(f"  {'total':<40} {sum(s for _, s in costs):5.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
