"""One job per stage, and the executor each runs on.

Locally every job runs all its steps in one process, the run worker (Dagster's ``in_process``
mode of its default executor; run configuration can still choose ``multiprocess``). The
isolation boundary is the stage, not each check: a process per step cost ~0.6 s of start-up
each and doubled the reference pipeline's wall time. On Kubernetes each job gets
its own `k8s_job_executor`, fixed with ``.configured`` so that run configuration from the UI or
an API call cannot move a stage's steps to another namespace or service account: the ingest
job's steps run in the ingest namespace as its service account, with only its secrets, and so
on. Every step pod runs under the "restricted" Pod Security Standard with a read-only root
filesystem and a small writable ``/tmp``.
"""

import functools
from dataclasses import dataclass
from typing import Any

import dagster as dg

from secure_pipeline.names import PIPELINE_TAG, STAGE_TAG
from secure_pipeline.spec import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    IsolationSpec,
    OrchestrationSpec,
    PipelineSpec,
)

# Imported once per run by the forkserver when run configuration picks the multiprocess
# executor, so the step processes fork with them loaded instead of each importing them again
# (2-3 s per step on two cores): the whole reference graph went from 98 s to 33 s. Only names
# the project depends on.
PRELOAD_MODULES = (
    "secure_pipeline.definitions", "pandas", "pyarrow.parquet", "pandera.pandas",
    "great_expectations", "great_expectations.expectations", "sklearn.linear_model",
    "sklearn.pipeline", "sklearn.compose", "sklearn.preprocessing", "sklearn.model_selection",
    "sklearn.metrics", "mlflow", "mlflow.sklearn", "art.attacks.evasion",
    "art.attacks.inference.membership_inference", "art.estimators.classification", "skops.io",
    "fairlearn.metrics", "matplotlib", "model_signing.signing", "model_signing.verifying",
    "scipy.stats",
)  # fmt: skip
KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class Stage:
    """A stage job: its name suffix, the assets it materializes and where it runs.

    Attributes:
        name: ``ingest``, ``train``, ``release`` or ``monitor``.
        stage_tag: Value of the ``secure_pipeline/stage`` run tag (the run queue limits on it).
        assets: Asset keys the job materializes (their checks come with them).
        isolation: Where its steps run on Kubernetes.
    """

    name: str
    stage_tag: str
    assets: tuple[dg.AssetKey, ...]
    isolation: IsolationSpec


def stages(pipeline: PipelineSpec) -> tuple[Stage, ...]:
    """The stage jobs of a pipeline, upstream first; the monitor job watches the champion."""
    from secure_pipeline.promotion.assets import serving_directory

    spec, names = pipeline.orchestration, pipeline.names
    release: tuple[dg.AssetKey, ...] = (names.registered_model, names.promoted_model)
    if serving_directory() is not None:
        release = (*release, names.canary_analysis)
    return (
        Stage("ingest", "ingestion", (names.raw, names.validated, names.features), spec.ingest),
        Stage("train", "training", (names.trained_model,), spec.train),
        Stage("release", "registry", release, spec.registry),
        Stage("monitor", "monitoring", (names.live_traffic,), spec.monitor),
    )


def job_name(pipeline: PipelineSpec, stage: str) -> str:
    """Name of a stage's job, e.g. ``adult_ingest``."""
    return f"{pipeline.name}_{stage}"


def _labels(stage: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "secure-pipeline", "secure-pipeline/stage": stage}


def step_executor_config(spec: OrchestrationSpec, stage: str, isolation: IsolationSpec) -> dict:
    """The ``k8s_job_executor`` configuration of one stage's steps.

    Args:
        spec: The pipeline's orchestration settings.
        stage: Stage name, used in pod labels (the network policies select on it).
        isolation: Where and as whom the stage's steps run.
    """
    config: dict[str, Any] = {
        "job_namespace": isolation.namespace,
        "service_account_name": isolation.service_account,
        "env_secrets": list(isolation.env_secrets),
        # The root filesystem is read-only; libraries that write a cache or temp file get /tmp.
        "env_vars": ["HOME=/tmp", "TMPDIR=/tmp"],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": isolation.tmp_size}}],
        "volume_mounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "labels": _labels(stage),
        "security_context": dict(CONTAINER_SECURITY_CONTEXT),
        "resources": {
            "requests": {"cpu": isolation.cpu_request, "memory": isolation.memory_request},
            "limits": {"cpu": isolation.cpu_limit, "memory": isolation.memory_limit},
        },
        "step_k8s_config": {
            "pod_spec_config": {
                "security_context": dict(POD_SECURITY_CONTEXT),
                # Step pods call no Kubernetes API; their cloud identity comes from workload
                # identity, not from a mounted service-account token.
                "automount_service_account_token": False,
            }
        },
    }
    if spec.image:
        config["job_image"] = spec.image
    return config


def adhoc_executor_config(spec: OrchestrationSpec) -> dict:
    """Executor of runs outside the stage jobs (an asset materialized ad hoc in the UI).

    Their steps are aimed at the control namespace as its ``default`` service account, which
    holds no stage's secrets and no cloud identity: such a run fails closed instead of
    borrowing a stage's privileges. With the roles of ``deploy/k8s/`` it fails at launch already
    (run pods may create Jobs only in the stage namespaces). Materialize through the stage jobs.
    """
    isolation = IsolationSpec(
        namespace=spec.control_namespace, service_account="default", env_secrets=()
    )
    return step_executor_config(spec, "adhoc", isolation)


# The default executor's schema with its default flipped: no ``execution`` config means one
# process; an explicit ``multiprocess`` (even empty) still means a process per step.
_LOCAL_CONFIG_SCHEMA = dg.Field(
    dg.Selector(dict(dg.multi_or_in_process_executor.config_schema.config_type.fields)),
    default_value={"in_process": {}},
)


def _local_config(config: dict[str, Any]) -> dict[str, Any]:
    if "multiprocess" not in config:
        return {"in_process": config.get("in_process") or {}}
    multiprocess = dict(config["multiprocess"] or {})
    multiprocess.setdefault(
        "start_method", {"forkserver": {"preload_modules": list(PRELOAD_MODULES)}}
    )
    return {"multiprocess": multiprocess}


@functools.cache
def local_executor() -> dg.ExecutorDefinition:
    """Dagster's default executor, running a run's steps in one process unless told otherwise.

    Run configuration still chooses as with the default executor: ``in_process`` (the default
    here), or ``multiprocess``, whose steps fork from a server that preloaded the heavy
    libraries unless the configuration names its own ``start_method``. Blocking checks hold in
    one process as in many: a failed one skips everything downstream of its asset.
    """
    return dg.multi_or_in_process_executor.configured(
        _local_config, name="in_process_by_default", config_schema=_LOCAL_CONFIG_SCHEMA
    )


def run_pod_tags(spec: OrchestrationSpec) -> dict[str, Any]:
    """Job tags shaping the run pod, which launches the step pods and does nothing else."""
    return {
        "dagster-k8s/config": {
            "pod_spec_config": {
                "service_account_name": spec.run_service_account,
                "security_context": dict(POD_SECURITY_CONTEXT),
            },
            "container_config": {"security_context": dict(CONTAINER_SECURITY_CONTEXT)},
            "pod_template_spec_metadata": {"labels": _labels("run")},
        }
    }


def job_executor(
    pipeline: PipelineSpec, job: str, stage: str, isolation: IsolationSpec, executor: str,
    tags: dict[str, Any],
) -> dg.ExecutorDefinition:  # fmt: skip
    """The executor of one of a pipeline's jobs; on Kubernetes, ``tags`` gain the run pod's.

    Args:
        pipeline: The pipeline spec.
        job: The job's name suffix (``ingest``, ``privacy``, ``rollback``...), naming the
            executor.
        stage: The stage its steps run as (pod labels, which the network policies select on).
        isolation: Where and as whom its steps run.
        executor: ``kubernetes`` or ``multiprocess``.
        tags: The job's tags, updated in place.
    """
    if executor != KUBERNETES:
        return local_executor()
    from dagster_k8s import k8s_job_executor

    tags.update(run_pod_tags(pipeline.orchestration))
    return k8s_job_executor.configured(
        step_executor_config(pipeline.orchestration, stage, isolation),
        name=f"{job_name(pipeline, job)}_k8s",
    )


def build_jobs(pipeline: PipelineSpec, executor: str) -> dict[str, Any]:
    """The stage jobs, keyed by stage name.

    Args:
        pipeline: The pipeline spec.
        executor: ``kubernetes`` or ``multiprocess``.
    """
    spec = pipeline.orchestration
    jobs = {}
    for stage in stages(pipeline):
        tags: dict[str, Any] = {
            STAGE_TAG: stage.stage_tag,
            PIPELINE_TAG: pipeline.name,
            # Per run, so it holds whatever instance config a deployment renders (the Helm
            # chart does not render run_monitoring.max_runtime_seconds).
            "dagster/max_runtime": str(spec.max_runtime_seconds),
        }
        executor_def = job_executor(
            pipeline, stage.name, stage.name, stage.isolation, executor, tags
        )
        jobs[stage.name] = dg.define_asset_job(
            name=job_name(pipeline, stage.name),
            selection=dg.AssetSelection.assets(*stage.assets),
            description=_DESCRIPTIONS[stage.name].format(
                namespace=stage.isolation.namespace, account=stage.isolation.service_account
            ),
            tags=tags,
            executor_def=executor_def,
        )
    return jobs


_DESCRIPTIONS = {
    "ingest": "Ingest the source, validate it and derive features, with every data check. "
    "On Kubernetes: namespace {namespace}, service account {account}.",
    "train": "Train the model and judge it (performance, robustness, membership inference, "
    "fairness). On Kubernetes: namespace {namespace}, service account {account}.",
    "release": "Sign and register the model, then promote it through the gate. On Kubernetes: "
    "namespace {namespace}, service account {account}.",
    "monitor": "Judge the live traffic the champion scored: input and score drift, error rate, "
    "live performance and fairness. On Kubernetes: namespace {namespace}, service account "
    "{account}.",
}
