"""deploy/k8s/: strictly valid manifests, and the isolation they promise."""

import copy
import ipaddress
import json
from typing import Any

import pytest

from secure_pipeline.environment import SETTINGS
from secure_pipeline.orchestration.jobs import step_executor_config
from secure_pipeline.pipeline import OrchestrationSpec
from secure_pipeline_tests.deploy.k8s_strict import ManifestError, validate_manifest
from secure_pipeline_tests.deploy.lint import lint_irsa_trust
from secure_pipeline_tests.deploy.rendering import DEPLOY, SAMPLE, manifests, of_kind, rendered_json

SPEC = OrchestrationSpec()
STAGES = {"ingest": SPEC.ingest, "train": SPEC.train, "release": SPEC.registry}
SERVE_NAMESPACE = "sp-serve"
NAMESPACES = {SPEC.control_namespace, *(s.namespace for s in STAGES.values()), SERVE_NAMESPACE}
PIPELINE_NAMESPACES = NAMESPACES - {SERVE_NAMESPACE}
# Accounts that call the Kubernetes API: the chart's webserver/daemon and the run pods.
API_ACCOUNTS = {("sp-dagster", "sp-dagster"), (SPEC.control_namespace, SPEC.run_service_account)}


def _name(manifest: dict[str, Any]) -> str:
    meta = manifest["metadata"]
    return f"{manifest['kind']}/{meta.get('namespace', '-')}/{meta['name']}"


@pytest.mark.parametrize("manifest", manifests(), ids=_name)
def test_every_manifest_is_strictly_valid(manifest: dict[str, Any]) -> None:
    validate_manifest(manifest)


def _network_policy() -> dict[str, Any]:
    return copy.deepcopy(of_kind("NetworkPolicy")[0])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["spec"].update(podSelecter=m["spec"].pop("podSelector")), "podSelecter"),
        (lambda m: m["spec"].update(policy_types=m["spec"].pop("policyTypes")), "policyTypes"),
        (lambda m: m["metadata"].update(labels={"a": 1}), r"labels\.a: expected str"),
        (lambda m: m.update(apiVersion="networking.k8s.io/v9"), "no kubernetes client model"),
    ],
    ids=["unknown-key", "snake-case-key", "wrong-type", "unknown-version"],
)
def test_validator_rejects_bad_manifests(mutate: Any, message: str) -> None:
    manifest = _network_policy()
    mutate(manifest)
    with pytest.raises(ManifestError, match=message):
        validate_manifest(manifest)


def test_validator_rejects_missing_required_field_and_coerced_bool() -> None:
    binding = copy.deepcopy(of_kind("RoleBinding")[0])
    del binding["roleRef"]
    with pytest.raises(ManifestError, match="role_ref"):
        validate_manifest(binding)
    account = copy.deepcopy(of_kind("ServiceAccount")[0])
    account["automountServiceAccountToken"] = "false"  # the client would read True
    with pytest.raises(ManifestError, match="expected bool"):
        validate_manifest(account)


def test_namespaces_enforce_the_restricted_standard() -> None:
    namespaces = {m["metadata"]["name"]: m["metadata"]["labels"] for m in of_kind("Namespace")}
    assert set(namespaces) == NAMESPACES
    for labels in namespaces.values():
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
            assert labels[f"pod-security.kubernetes.io/{mode}-version"]


def test_every_namespace_denies_everything_by_default() -> None:
    denied = set()
    for policy in of_kind("NetworkPolicy"):
        spec = policy["spec"]
        if (
            spec["podSelector"] == {}
            and sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
            and not spec.get("ingress")
            and not spec.get("egress")
        ):
            denied.add(policy["metadata"]["namespace"])
    assert denied == NAMESPACES


def _egress_rules(namespace: str) -> list[dict[str, Any]]:
    return [
        rule
        for policy in of_kind("NetworkPolicy")
        if policy["metadata"]["namespace"] == namespace
        for rule in policy["spec"].get("egress", [])
    ]


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_no_open_egress(namespace: str) -> None:
    for rule in _egress_rules(namespace):
        assert rule.get("to"), f"an egress rule in {namespace} without 'to' allows everything"
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).prefixlen > 0


def test_training_reaches_only_dns_event_log_s3_sts_and_mlflow() -> None:
    allowed = {SAMPLE[v] for v in ("SP_PG_CIDR", "SP_S3_CIDR", "SP_STS_CIDR")}
    cidrs, selectors = set(), []
    for rule in _egress_rules(SPEC.train.namespace):
        for peer in rule["to"]:
            if "ipBlock" in peer:
                cidrs.add(peer["ipBlock"]["cidr"])
                assert not peer["ipBlock"].get("except")
            else:
                selectors.append(peer["namespaceSelector"]["matchLabels"])
    assert cidrs == allowed
    assert SAMPLE["SP_SOURCE_CIDR"] not in cidrs
    assert {s["kubernetes.io/metadata.name"] for s in selectors} == {
        "kube-system",
        SAMPLE["SP_MLFLOW_NAMESPACE"],
    }


def test_stage_policies_select_the_step_pods_the_code_labels() -> None:
    for name, isolation in STAGES.items():
        labels = step_executor_config(SPEC, name, isolation)["labels"]
        selected = [
            p["spec"]["podSelector"].get("matchLabels", {})
            for p in of_kind("NetworkPolicy")
            if p["metadata"]["namespace"] == isolation.namespace and p["spec"].get("egress")
        ]
        stage_selectors = [s for s in selected if s]
        assert stage_selectors, f"no egress policy selects the {name} step pods"
        for selector in stage_selectors:
            assert selector.items() <= labels.items()
    ingest_cidrs = {
        peer["ipBlock"]["cidr"]
        for rule in _egress_rules(SPEC.ingest.namespace)
        for peer in rule["to"]
        if "ipBlock" in peer
    }
    assert SAMPLE["SP_SOURCE_CIDR"] in ingest_cidrs


def test_roles_are_minimal() -> None:
    for role in of_kind("Role"):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule[field], f"{_name(role)} uses '*' in {field}"
            assert not {"secrets", "configmaps", "serviceaccounts"} & set(rule["resources"])
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    assert not of_kind("ClusterRole")
    assert not of_kind("ClusterRoleBinding")


def test_run_pods_may_launch_steps_only_in_the_stage_namespaces() -> None:
    expected = {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("batch", "jobs/status"): {"get"},
        ("", "pods"): {"get", "list", "watch", "delete"},
        ("", "pods/log"): {"get"},
    }
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind("Role")}
    granted = set()
    for binding in of_kind("RoleBinding"):
        subjects = {(s["namespace"], s["name"]) for s in binding["subjects"]}
        if (SPEC.control_namespace, SPEC.run_service_account) not in subjects:
            continue
        namespace = binding["metadata"]["namespace"]
        granted.add(namespace)
        role = roles[(namespace, binding["roleRef"]["name"])]
        rules = {
            (group, resource): set(rule["verbs"])
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        assert rules == expected
    assert granted == {s.namespace for s in STAGES.values()}


def test_service_accounts_match_the_code_and_the_iam_roles() -> None:
    accounts = {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m for m in of_kind("ServiceAccount")
    }
    for isolation in STAGES.values():
        assert (isolation.namespace, isolation.service_account) in accounts
    assert (SPEC.control_namespace, SPEC.run_service_account) in accounts
    prefix = f"arn:aws:iam::{SAMPLE['SP_ACCOUNT_ID']}:role/"
    annotated = 0
    for (namespace, name), account in accounts.items():
        automount = account.get("automountServiceAccountToken")
        assert automount is ((namespace, name) in API_ACCOUNTS), f"{namespace}/{name}"
        arn = account["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn")
        if arn is None:
            continue
        annotated += 1
        assert arn.startswith(prefix)
        role = arn.removeprefix(prefix)
        assert (DEPLOY / "iam" / "policies" / f"{role}.json").is_file()
        trust = rendered_json(f"iam/trust/{role}.json")
        assert lint_irsa_trust(trust, namespace=namespace, service_account=name) == []
    # Every stage, the code server and the model server have a cloud identity; run pods do not.
    assert annotated == len(STAGES) + 2
    run_account = accounts[(SPEC.control_namespace, SPEC.run_service_account)]
    assert "annotations" not in run_account["metadata"]


# Read by libraries themselves, not by secure_pipeline: allowed for an internal CA.
THIRD_PARTY_SETTINGS = {"MLFLOW_TRACKING_SERVER_CERT_PATH", "AWS_CA_BUNDLE", "PGSSLROOTCERT"}


def test_config_maps_use_only_registered_settings() -> None:
    known = {s.name for s in SETTINGS} | THIRD_PARTY_SETTINGS
    maps = of_kind("ConfigMap")
    for config_map in maps:
        assert set(config_map["data"]) <= known, _name(config_map)
        assert all(isinstance(v, str) for v in config_map["data"].values())
    common = {
        m["metadata"]["namespace"]: m["data"]
        for m in maps
        if m["metadata"]["name"] == "sp-common-env"
    }
    # The run launcher hands sp-common-env to run pods and every step pod.
    assert set(common) == PIPELINE_NAMESPACES
    assert len({json.dumps(d, sort_keys=True) for d in common.values()}) == 1
    required = {s.name for s in SETTINGS if s.required_in_production}
    # DAGSTER_PG_PASSWORD comes from the chart's secretKeyRef, the source URI is the reference
    # pipeline's declared source variable.
    provided = set(next(iter(common.values()))) | {"DAGSTER_PG_PASSWORD"}
    assert required <= provided
    assert "SECURE_PIPELINE_SOURCE_URI" in provided
    for value in next(iter(common.values())).values():
        assert "@" not in value.split("//", 1)[-1].split("/", 1)[0], "credentials in a URI"
