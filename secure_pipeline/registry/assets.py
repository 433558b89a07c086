"""The registry stage as Dagster definitions.

``registered_model``: the latest model, if every required signed verdict passed for its digest,
becomes a signed bundle, a new MLflow model version and a signed registration;
``signature_verifies`` re-downloads and verifies it. The promotion gate is
`secure_pipeline.promotion.assets`.
"""

from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import dagster as dg

from secure_pipeline.names import FAIRNESS, MEMBERSHIP, ROBUSTNESS, SIGNATURE_VERIFIES
from secure_pipeline.retries import retry_transient_io
from secure_pipeline.spec import PipelineSpec
from secure_pipeline.storage.io_manager import latest_record, load_recorded, recorded_snapshot
from secure_pipeline.storage.resources import SnapshotStoreResource
from secure_pipeline.storage.snapshots import sha256_hex
from secure_pipeline.training.assets import experiment_name
from secure_pipeline.trust.identities import RELEASE
from secure_pipeline.verdicts import verdict


def _check_results(run_id: str | None) -> dict[str, Any]:
    """The check result documents logged to the model's MLflow run (for the model card)."""
    if not run_id:
        return {}
    import mlflow

    from secure_pipeline.training.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    results = {}
    for name in (ROBUSTNESS, MEMBERSHIP, FAIRNESS):
        try:
            results[name] = mlflow.artifacts.load_dict(f"runs:/{run_id}/checks/{name}.json")
        except Exception:  # noqa: BLE001, S112 - a card section is optional; verdicts are not
            continue
    return results


def registered(
    instance: dg.DagsterInstance, store: SnapshotStoreResource, pipeline: PipelineSpec
) -> dict[str, Any]:
    """What the latest materialization of ``registered_model`` registered (name, version...)."""
    key = pipeline.names.registered_model
    return load_recorded(store.get_store(), latest_record(instance, key), key)


def build_registry_stage(
    pipeline: PipelineSpec,
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """Build ``registered_model`` (+ ``signature_verifies``) and ``promoted_model``."""
    model_key, registered_key = pipeline.names.trained_model, pipeline.names.registered_model
    owners = list(pipeline.owners) or None

    @dg.asset(
        key=registered_key,
        deps=[model_key],
        group_name="registry",
        kinds={"mlflow", "sigstore"},
        owners=owners,
        code_version=pipeline.code_version,
        description=(
            "The latest model, only if every required check passed for its digest, as a signed "
            "bundle: the skops model in an MLflow model directory, a lineage manifest (raw, "
            "validated and feature snapshot digests, parameters, metrics, every verdict with "
            "the digest it judged, the policy) and a model card, signed with OpenSSF "
            "model_signing into a Sigstore bundle. Registered as a new MLflow model version "
            "tagged with the model digest, bundle digest and signer."
        ),
        tags=pipeline.names.asset_tags("registry"),
        op_tags=pipeline.orchestration.registry.dagster_tags(RELEASE),
    )
    @retry_transient_io(pipeline.orchestration)
    def registered_model(
        context: dg.AssetExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.MaterializeResult[Any]:
        from secure_pipeline.errors import PolicyViolation
        from secure_pipeline.features.window import training_features
        from secure_pipeline.registry.bundle import (
            LINEAGE_FILE,
            ONNX_FILE,
            LineageError,
            build_lineage,
            model_card,
            model_interface,
            onnx_copy,
            onnx_entry,
            verdict_problems,
            version_description,
            write_bundle,
        )
        from secure_pipeline.registry.mlflow_registry import register_bundle, run_experiment
        from secure_pipeline.registry.registration import record_registration
        from secure_pipeline.registry.signing import (
            SIGNATURE_FILE,
            sign_bundle,
            signer_from_environment,
        )
        from secure_pipeline.registry.verification import verify_bundle_dir
        from secure_pipeline.training.tracking import model_version_link_metadata, run_link_metadata
        from secure_pipeline.trust.policy import trust_policy
        from secure_pipeline.trust.signers import signer_for

        store, audit = snapshot_store.get_store(), snapshot_store.get_audit_log()
        trust, release = trust_policy(), signer_for(RELEASE)
        record = latest_record(context.instance, model_key)
        key, model_sha, _ = recorded_snapshot(record, model_key)
        model_bytes = store.read_bytes((key, model_sha))
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        actor = f"asset:{registered_key.to_user_string()}"

        def refuse(problems: list[str]) -> None:
            audit.append("registration.refused", signer=release, actor=actor,
                         run_id=context.run.run_id, subject=model_sha,
                         details={"problems": [p[:400] for p in problems[:8]]})  # fmt: skip
            raise PolicyViolation(
                f"model {model_sha[:12]} is not registered: " + "; ".join(problems)
            )

        try:
            lineage, evidence = build_lineage(
                pipeline, store, trust, model_sha256=model_sha, model_metadata=meta,
                run_id=context.run.run_id,
            )  # fmt: skip
        except LineageError as exc:
            refuse([str(exc)])
        problems = verdict_problems(lineage["checks"])
        if problems:
            refuse(problems)
        # The ONNX copy the train identity's signed onnx_equivalent verdict judged and named,
        # read by that digest (verified); None: the verdict found no convertible copy.
        onnx, compared = onnx_copy(pipeline, store, trust, lineage, evidence)
        if onnx is not None:
            lineage[ONNX_FILE] = {**onnx_entry(onnx, pipeline), "equivalence": compared}
        signer = signer_from_environment()
        run_id = meta.get("mlflow_run_id")
        with TemporaryDirectory(prefix="bundle-") as temporary:
            bundle = Path(temporary) / "bundle"
            bundle.mkdir()
            card = model_card(pipeline, lineage, _check_results(run_id))
            # Signature and input example first: the bundle signature must cover them.
            # The example comes from the (last day's) features the model was trained on.
            key_, sha_, _day = training_features(lineage)[-1]
            interface = model_interface(pipeline, model_bytes, store, {"key": key_, "sha256": sha_})
            write_bundle(bundle, model_bytes, lineage, card, evidence, interface, onnx)
            sign_bundle(bundle, signer)
            verification = verify_bundle_dir(bundle, trust=trust, pipeline=pipeline, store=store)
            signed = any(step == "signature" and ok for step, ok, _ in verification.steps)
            if not verification.ok and signed:
                # Signed as it should be, yet its lineage does not hold: a snapshot it names
                # changed or vanished since the checks judged it (re-hashed only here).
                refuse(verification.problems)
            if not verification.ok:
                raise PolicyViolation(
                    "the freshly signed bundle does not verify (is the signer the trust "
                    "policy's release identity?): " + "; ".join(verification.problems)
                )
            lineage_bytes = (bundle / LINEAGE_FILE).read_bytes()
            signature = (bundle / SIGNATURE_FILE).read_bytes()
            digest = str(verification.bundle_digest)
            # Tags mirror the signed registration for people browsing MLflow; nothing reads
            # them as evidence.
            tags = {
                "model_sha256": model_sha,
                "bundle_digest": digest,
                "lineage_sha256": sha256_hex(lineage_bytes),
                "signer": signer.name,
                "dagster_run_id": context.run.run_id,
            }
            version, source = register_bundle(
                experiment_name(pipeline), str(run_id), pipeline.name, bundle, tags,
                bundle_digest=digest, description=version_description(pipeline, card),
                card=card,
            )  # fmt: skip
        registration = record_registration(
            store, release, pipeline=pipeline.name, name=pipeline.name, version=version,
            source=source, model_sha256=model_sha, bundle_digest=digest,
            lineage_sha256=tags["lineage_sha256"],
            runs={"mlflow_run_id": str(run_id), "dagster_run_id": context.run.run_id},
        )  # fmt: skip
        # Independent, immutable copies of what was signed, beside the other snapshots.
        run = context.run.run_id
        kept_lineage = store.put_bytes(
            [*registered_key.path, "_lineage"], lineage_bytes, ext="json", format="json", run_id=run
        )
        kept_signature = store.put_bytes(
            [*registered_key.path, "_signature"],
            signature,
            ext="sig",
            format="sigstore",
            run_id=run,
        )
        audit_record = audit.append(
            "model.registered",
            signer=release,
            actor=actor,
            run_id=context.run.run_id,
            subject=model_sha,
            details={"name": pipeline.name, "version": version, "source": source,
                     "registration": registration.sha256, **tags},
        )  # fmt: skip
        value = {
            "name": pipeline.name,
            "version": version,
            **tags,
            "lineage_key": kept_lineage.key,
            "signature_key": kept_signature.key,
        }
        context.log.info(f"registered {pipeline.name} version {version}, signed by {signer.name}")
        return dg.MaterializeResult(
            value=value,
            metadata={
                "model_name": pipeline.name,
                "model_version": version,
                "model_uri": f"models:/{pipeline.name}/{version}",
                "mlflow_model_version": model_version_link_metadata(pipeline.name, version),
                "mlflow_run": run_link_metadata(str(run_id), run_experiment(str(run_id))),
                "input_example": "one made-up row (the data describes people)"
                if interface.synthetic
                else f"{len(interface.example)} evaluation rows of model inputs",
                "model_sha256": model_sha,
                "bundle_digest": tags["bundle_digest"],
                "signer": signer.name,
                "dev_signer": signer.dev,
                "lineage": dg.MetadataValue.json(
                    {k: lineage[k] for k in ("data", "metrics", "policy_sha256")}
                ),
                "verdicts": len(lineage["checks"]),
                "registration_attestation": registration.sha256,
                "registration_audit_record": f"{audit_record.seq}:{audit_record.hash}",
            },
        )

    @dg.asset_check(
        asset=registered_key,
        name=SIGNATURE_VERIFIES,
        blocking=True,
        description=(
            "The registered version, downloaded back from the registry, verifies: signed by the "
            "release identity, every file matching its signed digest, no pickle, every verdict "
            "of the lineage signed by its stage's identity and not overturned, the snapshots "
            "intact, today's policy, and the release identity's signed registration of exactly "
            "this bundle as this version. A failure means the registry holds something other "
            "than what was signed."
        ),
        op_tags=pipeline.orchestration.registry.dagster_tags(RELEASE),
    )
    @retry_transient_io(pipeline.orchestration)
    def signature_verifies(
        context: dg.AssetCheckExecutionContext, snapshot_store: SnapshotStoreResource
    ) -> dg.AssetCheckResult:
        from secure_pipeline.registry.evidence import verify_reference
        from secure_pipeline.trust.policy import trust_policy

        value = registered(context.instance, snapshot_store, pipeline)
        with verify_reference(
            f"models:/{value['name']}/{value['version']}", pipeline=pipeline,
            trust=trust_policy(), store=snapshot_store.get_store(),
        ) as evidence:  # fmt: skip
            verification = evidence.verification
        return verdict(
            snapshot_store,
            pipeline=pipeline,
            identity=RELEASE,
            run_id=context.run.run_id,
            asset_key=registered_key,
            check_name=SIGNATURE_VERIFIES,
            passed=verification.ok,
            subject=verification.model_sha256 or value.get("model_sha256"),
            summary={"version": value["version"], "signer": verification.signer},
            metadata={
                "model_uri": f"models:/{value['name']}/{value['version']}",
                "model_sha256": value.get("model_sha256"),
                "signer": verification.signer or "none",
                "problems_found": float(len(verification.problems)),
                "report": dg.MetadataValue.md(f"```\n{verification.report()}\n```"),
            },
            description="; ".join(verification.problems) or None,
        )

    return [registered_model], [signature_verifies]
