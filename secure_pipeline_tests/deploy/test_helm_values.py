"""deploy/helm/values.yaml: the chart settings, and the pods dagster-k8s builds from them.

The chart's schema is not available offline (no helm binary, no chart tarball), so key paths
are checked against what the chart's templates read, and the run launcher's part is fed through
dagster-k8s itself: the config the chart writes into dagster.yaml is validated with
``K8sRunLauncher``'s own config schema, and step and run pods are built with dagster-k8s's
merge and Job construction, then validated strictly against the Kubernetes API models.
"""

import json
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from secure_pipeline.orchestration.jobs import run_pod_tags, step_executor_config
from secure_pipeline.pipeline import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    IsolationSpec,
    OrchestrationSpec,
)
from secure_pipeline.trust.identities import MONITOR, PRIVACY, STAGE_IDENTITIES, signer_variable
from secure_pipeline_tests.deploy.k8s_strict import validate_manifest
from secure_pipeline_tests.deploy.rendering import DEPLOY, ROOT, SAMPLE, helm_values, of_kind

SPEC = OrchestrationSpec()
STAGES = {
    "ingest": SPEC.ingest,
    "train": SPEC.train,
    "release": SPEC.registry,
    "privacy": SPEC.privacy,
    "monitor": SPEC.monitor,
}
IMAGE = f"{SAMPLE['SP_IMAGE_REPOSITORY']}:{SAMPLE['SP_IMAGE_TAG']}"
RUN_K8S_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}


def _path(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        assert isinstance(node, dict), f"values.yaml: {dotted} crosses a non-mapping"
        assert part in node, f"values.yaml lacks {dotted}"
        node = node[part]
    return node


def _instance() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("runLauncher.type", "K8sRunLauncher"),
        ("runLauncher.config.k8sRunLauncher.jobNamespace", SPEC.control_namespace),
        ("postgresql.enabled", False),
        ("generatePostgresqlPasswordSecret", False),
        ("rbacEnabled", False),
        ("telemetry.enabled", False),
        ("dagsterDaemon.runCoordinator.type", "QueuedRunCoordinator"),
        ("dagsterDaemon.runMonitoring.enabled", True),
        ("dagsterWebserver.enableReadOnly", True),
        ("dagster-user-deployments.deployments", None),
        (
            "runLauncher.config.k8sRunLauncher.runK8sConfig.podSpecConfig.serviceAccountName",
            SPEC.run_service_account,
        ),
    ],
)
def test_key_paths(path: str, expected: Any) -> None:
    value = _path(helm_values(), path)
    if expected is not None:
        assert value == expected


def test_run_queue_retries_and_monitoring_match_the_instance_file() -> None:
    daemon, instance = helm_values()["dagsterDaemon"], _instance()
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    expected = instance["run_coordinator"]["config"]
    assert queued["maxConcurrentRuns"] == expected["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == expected["tag_concurrency_limits"]
    retries = daemon["runRetries"]
    assert retries == {
        "enabled": instance["run_retries"]["enabled"],
        "maxRetries": instance["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": instance["run_retries"]["retry_on_asset_or_op_failure"],
    }
    assert retries["retryOnAssetOrOpFailure"] is False
    monitoring = daemon["runMonitoring"]
    for camel, snake in (("startTimeoutSeconds", "start_timeout_seconds"),
                         ("cancelTimeoutSeconds", "cancel_timeout_seconds"),
                         ("pollIntervalSeconds", "poll_interval_seconds")):  # fmt: skip
        assert monitoring[camel] == instance["run_monitoring"][snake]
    assert monitoring["freeSlotsAfterRunEndSeconds"] > 0
    assert helm_values()["telemetry"]["enabled"] is instance["telemetry"]["enabled"] is False


def test_postgres_matches_the_instance_file_and_holds_no_password() -> None:
    values, instance = helm_values(), _instance()
    database = instance["storage"]["postgres"]["postgres_db"]
    postgresql = values["postgresql"]
    assert postgresql["postgresqlParams"] == database["params"]
    assert postgresql["postgresqlScheme"] == database["scheme"]
    assert postgresql["service"]["port"] == int(SAMPLE["SP_PG_PORT"])

    def passwords(node: Any, path: str = "") -> list[tuple[str, Any]]:
        if isinstance(node, dict):
            found = [
                (f"{path}.{k}", v)
                for k, v in node.items()
                if "password" in k.lower() and not isinstance(v, bool | dict)
            ]
            return found + [p for k, v in node.items() for p in passwords(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in passwords(v, f"{path}[{i}]")]
        return []

    for path, value in passwords(values):
        assert value in ("", None), f"plaintext password at {path}"


def test_workspace_matches_deploy_workspace() -> None:
    (location,) = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"]
    (server,) = helm_values()["dagsterWebserver"]["workspace"]["servers"]
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    assert server["name"] == location["grpc_server"]["location_name"]
    assert server["port"] == location["grpc_server"]["port"] == deployment["port"]
    assert server["host"] == deployment["name"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "secure_pipeline.definitions"]
    # Forwarding the code server's settings would break step pods in the stage namespaces.
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}


def _snake(security_context: dict[str, Any], model: str) -> dict[str, Any]:
    """A camelCase security context as the client model's snake_case dict."""
    obj = ApiClient()._ApiClient__deserialize(security_context, model)  # type: ignore[attr-defined]

    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: prune(v) for k, v in value.items() if v is not None}
        return value

    return prune(obj.to_dict())


def test_security_contexts_equal_the_codes() -> None:
    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    pods = [
        values["dagsterWebserver"]["podSecurityContext"],
        values["dagsterDaemon"]["podSecurityContext"],
        deployment["podSecurityContext"],
        values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"][
            "securityContext"
        ],
    ]
    containers = [
        values["dagsterWebserver"]["securityContext"],
        values["dagsterDaemon"]["securityContext"],
        deployment["securityContext"],
        values["runLauncher"]["config"]["k8sRunLauncher"]["securityContext"],
    ]
    for pod in pods:
        assert _snake(pod, "V1PodSecurityContext") == dict(POD_SECURITY_CONTEXT)
    for container in containers:
        assert _snake(container, "V1SecurityContext") == dict(CONTAINER_SECURITY_CONTEXT)


def test_chart_version_in_readme_is_the_locked_dagster() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (dagster,) = [p["version"] for p in lock["package"] if p["name"] == "dagster"]
    assert f"--version {dagster}" in (DEPLOY / "README.md").read_text()


# -- the pods dagster-k8s builds from these values ---------------------------------------------


def _launcher_config(values: dict[str, Any]) -> dict[str, Any]:
    """The run_launcher config the chart writes into dagster.yaml (templates/helpers/instance/
    _run-launcher.tpl), with the in-cluster config swapped for a kubeconfig file."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "load_incluster_config": False,
        "job_namespace": k8s["jobNamespace"],
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": values["serviceAccount"]["name"],
        "dagster_home": values["global"]["dagsterHome"],
        "instance_config_map": "dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "env_config_maps": [c["name"] for c in k8s["envConfigMaps"]],
        "env_secrets": [c["name"] for c in k8s["envSecrets"]],
        "env_vars": k8s["envVars"],
        "volume_mounts": k8s["volumeMounts"],
        "volumes": k8s["volumes"],
        "labels": k8s["labels"],
        "resources": k8s["resources"],
        "security_context": k8s["securityContext"],
        "run_k8s_config": {RUN_K8S_KEYS[k]: v for k, v in k8s["runK8sConfig"].items()},
    }


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real K8sRunLauncher configured as the chart configures it (no cluster contacted)."""
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "offline",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "not-a-token"}}],
                "contexts": [{"name": "offline", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    checked = process_config(K8sRunLauncher.config_type(), _launcher_config(helm_values()))
    assert checked.success, checked.errors
    return K8sRunLauncher(**{**checked.value, "kubeconfig_file": str(kubeconfig)})


def _run(spec: OrchestrationSpec) -> SimpleNamespace:
    # Only the fields K8sContainerContext.create_for_run reads.
    tags = {"dagster-k8s/config": json.dumps(run_pod_tags(spec)["dagster-k8s/config"])}
    return SimpleNamespace(job_code_origin=None, tags=tags)


def _pod_job(context: Any, launcher: Any, component: str) -> dict[str, Any]:
    from dagster_k8s.job import construct_dagster_k8s_job

    job = construct_dagster_k8s_job(
        context.get_k8s_job_config(IMAGE, launcher),
        ["dagster", "api", "execute_step"],
        "dagster-step-0123456789abcdef",
        context.run_k8s_config,
        pod_name="dagster-step-0123456789abcdef",
        component=component,
        labels={"dagster/op": "x"},
    )
    return ApiClient().sanitize_for_serialization(job)


def step_pod(launcher: Any, stage: str, isolation: IsolationSpec) -> tuple[str, dict[str, Any]]:
    """(namespace, Job) of a stage's step pod, merged as dagster-k8s's step handler merges it:
    run launcher, then the stage executor, then the assets' op tags."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, get_user_defined_k8s_config

    config = step_executor_config(SPEC, stage, isolation)
    executor = K8sContainerContext(
        service_account_name=config.get("service_account_name"),
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
    op_tags = {"dagster-k8s/config": json.dumps(isolation.dagster_tags()["dagster-k8s/config"])}
    context = (
        K8sContainerContext.create_for_run(_run(SPEC), launcher, include_run_tags=False)
        .merge(executor)
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    )
    return context.namespace, _pod_job(context, launcher, "step_worker")


def _existing_config_maps() -> set[tuple[str, str]]:
    return {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in of_kind("ConfigMap")}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_step_pods_are_valid_isolated_and_reference_only_what_exists(launcher, stage) -> None:
    isolation = STAGES[stage]
    namespace, job = step_pod(launcher, stage, isolation)
    validate_manifest(job)
    assert namespace == isolation.namespace
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == isolation.service_account
    assert pod["automountServiceAccountToken"] is False
    names = [v["name"] for v in pod["volumes"]]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert len(names) == len(set(names)), f"duplicate volumes {names}"
    assert len(mounts) == len(set(mounts)), f"duplicate mount paths {mounts}"
    assert {m["name"] for m in container["volumeMounts"]} <= set(names)
    # Everything referenced must exist in the stage namespace.
    config_maps = {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e}
    config_maps |= {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    created_here = {n for ns, n in _existing_config_maps() if ns == namespace}
    assert config_maps - {"sp-trust-policy"} <= created_here  # the trust policy is a file set
    secrets = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
    assert secrets == set(isolation.env_secrets)
    readme = (DEPLOY / "README.md").read_text()
    for name in secrets | {"sp-trust-policy", helm_values()["global"]["postgresqlSecretName"]}:
        assert name in readme, f"deploy/README.md does not say how to create {name}"
    # Restricted Pod Security Standard, as the namespaces enforce it.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in mounts
    env = {e["name"]: e for e in container["env"]}
    assert env["DAGSTER_HOME"]["value"] == helm_values()["global"]["dagsterHome"]
    assert "secretKeyRef" in env["DAGSTER_PG_PASSWORD"]["valueFrom"]


def test_run_pods_run_as_the_run_account_in_the_control_namespace(launcher) -> None:
    from dagster_k8s.container_context import K8sContainerContext

    context = K8sContainerContext.create_for_run(_run(SPEC), launcher, include_run_tags=True)
    job = _pod_job(context, launcher, "run_worker")
    validate_manifest(job)
    pod = job["spec"]["template"]["spec"]
    assert context.namespace == SPEC.control_namespace
    assert pod["serviceAccountName"] == SPEC.run_service_account
    assert pod["automountServiceAccountToken"] is True  # it creates the step Jobs
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "run_worker"
    )
    # Even a run without the stage tags (an ad-hoc run) runs as sp-run, not the chart's account.
    bare = SimpleNamespace(job_code_origin=None, tags={})
    context = K8sContainerContext.create_for_run(bare, launcher, include_run_tags=True)
    assert _pod_job(context, launcher, "run_worker")["spec"]["template"]["spec"][
        "serviceAccountName"
    ] == (SPEC.run_service_account)


# The identities whose signer each stage's step pods are given (deploy/k8s/40-configmaps.yaml).
STAGE_SIGNERS = {
    "ingest": {"ingest"},
    "train": {"train"},
    "release": {"release", "gate"},
    "privacy": {PRIVACY},
    "monitor": {MONITOR},
}


def _signers_seen(namespace: str, container: dict[str, Any]) -> set[str]:
    """Identities whose SECURE_PIPELINE_SIGNER_* a container gets from env and ConfigMaps.

    Stage Secrets are created by hand and are not seen here; deploy/README.md says they hold no
    signer.
    """
    data = {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m["data"] for m in of_kind("ConfigMap")
    }
    names = {e["name"] for e in container.get("env") or []}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            names |= set(data[(namespace, source["configMapRef"]["name"])])
    return {i for i in STAGE_IDENTITIES if signer_variable(i) in names}


def test_each_pod_gets_only_its_own_identities_signer(launcher) -> None:
    from dagster_k8s.container_context import K8sContainerContext

    for stage, isolation in STAGES.items():
        namespace, job = step_pod(launcher, stage, isolation)
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert _signers_seen(namespace, container) == STAGE_SIGNERS[stage], stage
    context = K8sContainerContext.create_for_run(_run(SPEC), launcher, include_run_tags=True)
    (container,) = _pod_job(context, launcher, "run_worker")["spec"]["template"]["spec"][
        "containers"
    ]
    assert _signers_seen(SPEC.control_namespace, container) == set(), "run pods sign nothing"
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    code_server = {"envFrom": [{"configMapRef": c} for c in deployment["envConfigMaps"]]}
    assert _signers_seen(SPEC.control_namespace, code_server) == {MONITOR}
    # sp-code-env stays with the code server: run and step pods come from the run launcher.
    launcher_maps = helm_values()["runLauncher"]["config"]["k8sRunLauncher"]["envConfigMaps"]
    assert "sp-code-env" not in {c["name"] for c in launcher_maps}
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}


def test_a_changed_tmp_size_would_be_caught(launcher) -> None:
    # The launcher's /tmp volume must equal the stage's, or the merged pod has two "tmp" volumes
    # (the API server rejects it). This is the check that notices drift.
    isolation = IsolationSpec(tmp_size="8Gi")
    _, job = step_pod(launcher, "train", isolation)
    names = [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]]
    assert names.count("tmp") == 2


def test_image_has_the_dagster_home_the_chart_sets() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    home = helm_values()["global"]["dagsterHome"]
    assert f"DAGSTER_HOME={home}" in dockerfile
    assert f"deploy/dagster.yaml {home}/dagster.yaml" in dockerfile
    assert Path(home).is_absolute()
