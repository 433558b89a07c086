"""Stage jobs and where their steps run, as dagster-k8s itself builds the pods."""

import json

import dagster as dg
import pytest
from dagster._core.execution.api import create_execution_plan
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from secure_pipeline.environment import Environment
from secure_pipeline.names import IDENTITY_TAG
from secure_pipeline.reference.adult import adult_pipeline
from secure_pipeline.trust.identities import STAGE_IDENTITIES, signer_variable
from secure_pipeline_tests.deploy.rendering import of_kind
from secure_pipeline_tests.test_environment import PRODUCTION

STAGES = {
    "adult_ingest": ("sp-ingest", "sp-ingest", ["sp-ingest-env"]),
    "adult_train": ("sp-train", "sp-train", ["sp-train-env"]),
    "adult_release": ("sp-registry", "sp-registry", ["sp-registry-env", "sp-registry-signing"]),
    "adult_monitor": ("sp-monitor", "sp-monitor", ["sp-monitor-env"]),
}


@pytest.fixture
def production(monkeypatch) -> dg.Definitions:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    return adult_pipeline().build_definitions()


def _container_context(config: dict) -> K8sContainerContext:
    """The executor's configuration as dagster-k8s's step handler reads it."""
    return K8sContainerContext(
        service_account_name=config.get("service_account_name"),
        env_config_maps=config.get("env_config_maps"),
        env_secrets=config.get("env_secrets"),
        env_vars=config.get("env_vars"),
        volume_mounts=config.get("volume_mounts"),
        volumes=config.get("volumes"),
        labels=config.get("labels"),
        namespace=config.get("job_namespace"),
        resources=config.get("resources"),
        security_context=config.get("security_context"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})),
    )


def render_steps(job: dg.JobDefinition, run_config: dict | None = None):
    """Every step pod of a job: (step key, namespace, V1Job), built by dagster-k8s."""
    config = ResolvedRunConfig.build(job, run_config or {}).execution.execution_engine_config
    plan = create_execution_plan(job, run_config=run_config or {})
    for step in plan.steps:
        context = (
            _container_context(config)
            .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step.tags)))
            .merge(
                K8sContainerContext(
                    run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                        config.get("per_step_k8s_config", {}).get(step.op_name, {})
                    )
                )
            )
        )
        pod_job = construct_dagster_k8s_job(
            job_config=DagsterK8sJobConfig(
                job_image=config.get("job_image") or "registry.example/secure-pipeline:1",
                dagster_home="/opt/dagster/dagster_home",
                instance_config_map="dagster-instance",
            ),
            args=["dagster", "api", "execute_step"],
            job_name=f"dagster-step-{step.key}".replace("_", "-")[:63],
            pod_name="step",
            component="step_worker",
            user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/op": step.key},
        )
        yield step.key, context.namespace, pod_job


def test_each_stage_job_runs_its_steps_in_its_own_namespace(production) -> None:
    seen = set()
    for name, (namespace, account, secrets) in STAGES.items():
        job = production.resolve_job_def(name)
        steps = list(render_steps(job))
        assert steps, name
        for key, step_namespace, pod_job in steps:
            seen.add(key)
            pod = pod_job.spec.template.spec
            container = pod.containers[0]
            assert step_namespace == namespace, key
            assert pod.service_account_name == account, key
            assert pod.automount_service_account_token is False, key
            assert pod.security_context.run_as_non_root is True, key
            assert pod.security_context.run_as_user == 10001, key
            assert pod.security_context.seccomp_profile.type == "RuntimeDefault", key
            security = container.security_context
            assert security.allow_privilege_escalation is False, key
            assert security.read_only_root_filesystem is True, key
            assert security.privileged is False, key
            assert security.capabilities.drop == ["ALL"], key
            assert [e.secret_ref.name for e in container.env_from] == secrets, key
            assert container.resources.limits, key
            assert {m.mount_path for m in container.volume_mounts} >= {"/tmp"}, key
            labels = pod_job.spec.template.metadata.labels
            assert labels["secure-pipeline/stage"] == name.removeprefix("adult_"), key
    # every asset and check of the graph runs in one of the stage jobs
    assert {"adult__raw_adult", "adult__validated_adult", "adult__features",
            "adult__trained_model", "adult__registered_model", "adult__promoted_model",
            "adult__trained_model_fairness_audit",
            "adult__registered_model_signature_verifies"} <= seen  # fmt: skip


def test_each_step_finds_its_own_signer_and_no_other_in_its_namespace(production) -> None:
    """The identity a step signs as (its op tag) is configured where the step runs, alone.

    Step pods take ``sp-common-env`` of their namespace (the run launcher's ConfigMap, see
    deploy/helm/values.yaml); deploy/k8s/40-configmaps.yaml gives each namespace the signers
    of exactly the identities whose steps run there.
    """
    common = {
        m["metadata"]["namespace"]: m["data"]
        for m in of_kind("ConfigMap")
        if m["metadata"]["name"] == "sp-common-env"
    }
    used: dict[str, set[str]] = {}
    for name, (namespace, _, _) in STAGES.items():
        plan = create_execution_plan(production.resolve_job_def(name))
        for step in plan.steps:
            identity = step.tags.get(IDENTITY_TAG)
            assert identity in STAGE_IDENTITIES, f"{step.key} signs as no stage identity"
            assert step.tags["secure_pipeline/k8s_namespace"] == namespace, step.key
            assert signer_variable(identity) in common[namespace], f"{step.key} has no signer"
            used.setdefault(namespace, set()).add(identity)
    for namespace, identities in used.items():
        configured = {i for i in STAGE_IDENTITIES if signer_variable(i) in common[namespace]}
        assert configured == identities, f"{namespace} holds signers its steps do not use"


def test_training_gets_more_memory_and_no_signing_key(production) -> None:
    pods = {
        key: pod_job.spec.template.spec.containers[0]
        for key, _, pod_job in render_steps(production.resolve_job_def("adult_train"))
    }
    assert pods["adult__trained_model"].resources.limits == {"cpu": "2", "memory": "4Gi"}
    for container in pods.values():
        assert "sp-registry-signing" not in [e.secret_ref.name for e in container.env_from]


def test_run_config_cannot_move_a_stage_to_another_namespace(production) -> None:
    job = production.resolve_job_def("adult_ingest")
    override = {"execution": {"config": {"job_namespace": "sp-registry",
                                         "service_account_name": "sp-registry"}}}  # fmt: skip
    try:
        steps = list(render_steps(job, override))
    except dg.DagsterInvalidConfigError:
        return  # refused outright: as good as ignored
    for _, namespace, pod_job in steps:
        assert namespace == "sp-ingest"
        assert pod_job.spec.template.spec.service_account_name == "sp-ingest"


def test_every_job_resolves_its_executor_config(production) -> None:
    """A misspelt executor key passes definition loading and fails only here."""
    for name in [*STAGES, "__ASSET_JOB"]:
        job = production.resolve_job_def(name)
        config = ResolvedRunConfig.build(job, {}).execution.execution_engine_config
        assert config["job_namespace"]


def test_adhoc_runs_get_no_stage_privileges(production) -> None:
    job = production.resolve_implicit_global_asset_job_def()
    for key, namespace, pod_job in render_steps(job):
        pod = pod_job.spec.template.spec
        assert namespace == "sp-dagster", key
        assert not pod.containers[0].env_from, key
        # the stage's service account is named by the op tag, but does not exist in sp-dagster:
        # the pod is refused by Kubernetes rather than run with a stage's identity elsewhere
        assert pod.service_account_name in {
            "default", "sp-ingest", "sp-train", "sp-registry", "sp-monitor"
        }  # fmt: skip


def test_run_pods_use_the_run_service_account(production) -> None:
    for name in STAGES:
        tags = production.resolve_job_def(name).tags
        config = tags["dagster-k8s/config"]
        config = json.loads(config) if isinstance(config, str) else config
        assert config["pod_spec_config"]["service_account_name"] == "sp-run"
        assert tags["secure_pipeline/stage"] in {"ingestion", "training", "registry", "monitoring"}
        assert tags["dagster/max_runtime"] == "14400"  # the chart drops the instance setting


def test_local_jobs_use_the_default_executor() -> None:
    defs = adult_pipeline().build_definitions(Environment.LOCAL)
    for name in STAGES:
        assert defs.resolve_job_def(name).executor_def.name == "in_process_by_default"


def test_a_single_host_production_runs_without_kubernetes(monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    for name in ("local", "multiprocess"):  # the earlier name still means one host
        monkeypatch.setenv("SECURE_PIPELINE_EXECUTOR", name)
        defs = adult_pipeline().build_definitions()
        assert defs.resolve_job_def("adult_train").executor_def.name == "in_process_by_default"
    monkeypatch.setenv("SECURE_PIPELINE_EXECUTOR", "k8s")
    with pytest.raises(Exception, match="SECURE_PIPELINE_EXECUTOR must be one of"):
        adult_pipeline().build_definitions()
