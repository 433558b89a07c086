"""deploy/k8s/: strictly valid manifests, and the isolation they promise."""

import copy
import ipaddress
import json
from typing import Any

import pytest

from secure_pipeline import environment
from secure_pipeline.environment import SETTINGS
from secure_pipeline.orchestration.jobs import step_executor_config
from secure_pipeline.pipeline import OrchestrationSpec
from secure_pipeline.serving.server import SERVING_REQUIRED
from secure_pipeline.trust.identities import (
    MONITOR,
    PRIVACY,
    SERVE,
    STAGE_IDENTITIES,
    signer_variable,
)
from secure_pipeline_tests.deploy.k8s_strict import ManifestError, validate_manifest
from secure_pipeline_tests.deploy.lint import lint_irsa_trust, signing_grants
from secure_pipeline_tests.deploy.rendering import DEPLOY, SAMPLE, manifests, of_kind, rendered_json
from secure_pipeline_tests.serving.istio_lint import documents as istio_documents

SPEC = OrchestrationSpec()
STAGES = {
    "ingest": SPEC.ingest,
    "train": SPEC.train,
    "release": SPEC.registry,
    "privacy": SPEC.privacy,
    "monitor": SPEC.monitor,
}
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


def test_training_reaches_only_dns_event_log_s3_sts_kms_and_mlflow() -> None:
    allowed = {SAMPLE[v] for v in ("SP_PG_CIDR", "SP_S3_CIDR", "SP_STS_CIDR", "SP_KMS_CIDR")}
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


def test_privacy_reaches_only_dns_event_log_s3_sts_and_kms() -> None:
    # No MLflow (models are found in the audit trail), no source, no internet.
    allowed = {SAMPLE[v] for v in ("SP_PG_CIDR", "SP_S3_CIDR", "SP_STS_CIDR", "SP_KMS_CIDR")}
    cidrs, namespaces = set(), set()
    for rule in _egress_rules(SPEC.privacy.namespace):
        for peer in rule["to"]:
            if "ipBlock" in peer:
                cidrs.add(peer["ipBlock"]["cidr"])
                assert not peer["ipBlock"].get("except")
            else:
                namespaces.add(
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                )
    assert cidrs == allowed
    assert namespaces == {"kube-system"}


def test_monitor_reaches_only_dns_event_log_s3_sts_kms_and_mlflow() -> None:
    # The live traffic and the champion's evidence (S3), its signer and the data keys of
    # encrypted features (KMS), the champion's bundle (MLflow); no source, no OCI registry.
    allowed = {SAMPLE[v] for v in ("SP_PG_CIDR", "SP_S3_CIDR", "SP_STS_CIDR", "SP_KMS_CIDR")}
    cidrs, namespaces = set(), set()
    for rule in _egress_rules(SPEC.monitor.namespace):
        for peer in rule["to"]:
            if "ipBlock" in peer:
                cidrs.add(peer["ipBlock"]["cidr"])
                assert not peer["ipBlock"].get("except")
            else:
                namespaces.add(
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                )
    assert cidrs == allowed
    assert namespaces == {"kube-system", SAMPLE["SP_MLFLOW_NAMESPACE"]}
    # Nothing connects to the monitor's pods: only the default deny mentions ingress there.
    for policy in of_kind("NetworkPolicy"):
        if policy["metadata"]["namespace"] == SPEC.monitor.namespace:
            assert not policy["spec"].get("ingress"), policy["metadata"]["name"]


def test_every_namespace_that_handles_snapshots_uses_kms_data_keys() -> None:
    # Production refuses the local keyring; the setting is explicit wherever snapshots are read
    # or written, so a pod never falls back to key files it would not find.
    maps = _config_map_data()
    for namespace in PIPELINE_NAMESPACES:
        assert maps[(namespace, "sp-common-env")]["SECURE_PIPELINE_DATA_KEYRING"] == "kms"


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


def _egress_cidrs(namespace: str, selector: dict[str, str]) -> set[str]:
    return {
        peer["ipBlock"]["cidr"]
        for policy in of_kind("NetworkPolicy")
        if policy["metadata"]["namespace"] == namespace
        and policy["spec"]["podSelector"].get("matchLabels", {}).items() <= selector.items()
        for rule in policy["spec"].get("egress", [])
        for peer in rule["to"]
        if "ipBlock" in peer
    }


def test_only_the_signing_pods_reach_kms() -> None:
    kms = SAMPLE["SP_KMS_CIDR"]
    for name, isolation in STAGES.items():
        labels = step_executor_config(SPEC, name, isolation)["labels"]
        assert kms in _egress_cidrs(isolation.namespace, labels), name
    control = SPEC.control_namespace
    assert kms in _egress_cidrs(control, {"secure-pipeline/role": "code-server"})
    assert kms not in _egress_cidrs(control, {"app.kubernetes.io/component": "run_worker"})
    assert kms not in _egress_cidrs(control, {"secure-pipeline/role": "control"})
    # The slots sign their live traffic batches as the serve identity.
    for slot in (d for d in istio_documents(SAMPLE) if d["kind"] == "Deployment"):
        labels = slot["spec"]["template"]["metadata"]["labels"]
        assert kms in _egress_cidrs(SERVE_NAMESPACE, labels), slot["metadata"]["name"]


def test_only_the_model_servers_reach_the_oci_registry() -> None:
    """oci:// model references: the slots pull over HTTPS, and no pipeline pod reaches it."""
    registry = SAMPLE["SP_OCI_REGISTRY_CIDR"]
    for slot in (d for d in istio_documents(SAMPLE) if d["kind"] == "Deployment"):
        labels = slot["spec"]["template"]["metadata"]["labels"]
        assert registry in _egress_cidrs(SERVE_NAMESPACE, labels), slot["metadata"]["name"]
    rules = [
        (policy["metadata"]["namespace"], rule["ports"])
        for policy in of_kind("NetworkPolicy")
        for rule in policy["spec"].get("egress", [])
        if any(peer.get("ipBlock", {}).get("cidr") == registry for peer in rule["to"])
    ]
    assert rules == [(SERVE_NAMESPACE, [{"protocol": "TCP", "port": 443}])]


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
    # Every stage (the monitor job too), the code server and the model server have a cloud
    # identity; run pods do not.
    assert annotated == len(STAGES) + 2
    run_account = accounts[(SPEC.control_namespace, SPEC.run_service_account)]
    assert "annotations" not in run_account["metadata"]


# Read by libraries themselves, not by secure_pipeline: allowed for an internal CA, and the
# region of boto3 clients the code does not create itself (securesystemslib's KMS signer).
THIRD_PARTY_SETTINGS = {
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "AWS_CA_BUNDLE",
    "PGSSLROOTCERT",
    "AWS_DEFAULT_REGION",
}
# The signers each namespace's sp-common-env carries: the identities whose steps run there.
NAMESPACE_SIGNERS = {
    SPEC.control_namespace: set(),
    SPEC.ingest.namespace: {"ingest"},
    SPEC.train.namespace: {"train"},
    SPEC.registry.namespace: {"release", "gate"},
    SPEC.privacy.namespace: {PRIVACY},
    SPEC.monitor.namespace: {MONITOR},
}


def _signers(data: dict[str, str]) -> dict[str, str]:
    """Identity -> signer URI of a ConfigMap's data."""
    return {
        identity: data[signer_variable(identity)]
        for identity in STAGE_IDENTITIES
        if signer_variable(identity) in data
    }


def _config_map_data() -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, name) -> data of every rendered ConfigMap."""
    return {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m["data"] for m in of_kind("ConfigMap")
    }


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
    signers = {signer_variable(identity) for identity in STAGE_IDENTITIES}
    shared = [{k: v for k, v in d.items() if k not in signers} for d in common.values()]
    # Identical but for the signers: a setting that differs by namespace would be a surprise.
    assert len({json.dumps(d, sort_keys=True) for d in shared}) == 1
    required = {s.name for s in SETTINGS if s.required_in_production}
    # DAGSTER_PG_PASSWORD comes from the chart's secretKeyRef, the source URI is the reference
    # pipeline's declared source variable.
    provided = set(shared[0]) | {"DAGSTER_PG_PASSWORD"}
    assert required <= provided
    assert "SECURE_PIPELINE_SOURCE_URI" in provided
    for value in shared[0].values():
        assert "@" not in value.split("//", 1)[-1].split("/", 1)[0], "credentials in a URI"


def test_every_production_process_pins_the_trust_root() -> None:
    # environment.problems() refuses production without the pin, in the code location and the
    # model server alike; a fingerprint is no secret, so it lives with the shared settings.
    maps = _config_map_data()
    pinned = {key for key, data in maps.items() if "SECURE_PIPELINE_TRUST_ROOT" in data}
    expected = {(ns, "sp-common-env") for ns in PIPELINE_NAMESPACES} | {
        (SERVE_NAMESPACE, "sp-serve-env")
    }
    assert expected <= pinned
    for key in pinned:
        roots = maps[key]["SECURE_PIPELINE_TRUST_ROOT"].split(",")
        assert roots == SAMPLE["SP_TRUST_ROOT"].split(","), key
        assert all(len(r) == 64 for r in roots)
        assert "SECURE_PIPELINE_TRUST_POLICY" in maps[key], key


def _production_problems(monkeypatch, data: dict[str, str], **kwargs: Any) -> list[str]:
    """What environment.problems() says in a process given exactly ``data`` (and the chart's
    Postgres password)."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    for name, value in {**data, "DAGSTER_PG_PASSWORD": "from-the-secret"}.items():
        monkeypatch.setenv(name, value)
    return environment.problems(environment.Environment.PRODUCTION, **kwargs)


def test_every_production_process_is_completely_configured(monkeypatch) -> None:
    maps = _config_map_data()
    source = {"SECURE_PIPELINE_SOURCE_URI": "the reference pipeline's source"}
    for namespace in sorted(PIPELINE_NAMESPACES):
        data = maps[(namespace, "sp-common-env")]
        assert _production_problems(monkeypatch, data, source_variables=source) == [], namespace
    code_server = {**maps[(SPEC.control_namespace, "sp-common-env")]}
    code_server |= maps[(SPEC.control_namespace, "sp-code-env")]
    assert _production_problems(monkeypatch, code_server, source_variables=source) == []
    serve = maps[(SERVE_NAMESPACE, "sp-serve-env")]
    assert _production_problems(monkeypatch, serve, required=SERVING_REQUIRED) == []
    # And the pin is what makes them complete: without it, each is refused.
    unpinned = {k: v for k, v in serve.items() if k != "SECURE_PIPELINE_TRUST_ROOT"}
    refused = _production_problems(monkeypatch, unpinned, required=SERVING_REQUIRED)
    assert any("SECURE_PIPELINE_TRUST_ROOT is not set" in p for p in refused)


def test_each_namespace_sees_only_its_own_signers() -> None:
    maps = _config_map_data()
    for namespace, identities in NAMESPACE_SIGNERS.items():
        found = _signers(maps[(namespace, "sp-common-env")])
        assert set(found) == identities, namespace
        for identity, uri in found.items():
            # A KMS key, never a key file: the private key does not enter the pod.
            assert uri == f"awskms:{SAMPLE[f'SP_SIGNER_{identity.upper()}_KEY_ARN']}"
    # In sp-dagster the monitor signer is the code server's alone (helm/values.yaml,
    # test_helm_values.py); the monitor job holds it in its own namespace (above).
    assert _signers(maps[(SPEC.control_namespace, "sp-code-env")]) == {
        MONITOR: f"awskms:{SAMPLE['SP_SIGNER_MONITOR_KEY_ARN']}"
    }
    # The slots sign their live traffic batches, as the serve identity and no other.
    assert _signers(maps[(SERVE_NAMESPACE, "sp-serve-env")]) == {
        SERVE: f"awskms:{SAMPLE['SP_SIGNER_SERVE_KEY_ARN']}"
    }
    others = {k for k in maps if k[1] not in ("sp-common-env", "sp-code-env", "sp-serve-env")}
    assert not any(_signers(maps[k]) for k in others)


def test_signing_roles_match_the_namespaces_signers() -> None:
    # The role a namespace's pods assume (IRSA) may sign with exactly that namespace's keys.
    accounts = {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m for m in of_kind("ServiceAccount")
    }
    prefix = f"arn:aws:iam::{SAMPLE['SP_ACCOUNT_ID']}:role/"
    places = {
        **{
            (s.namespace, s.service_account): NAMESPACE_SIGNERS[s.namespace]
            for s in STAGES.values()
        },
        (SPEC.control_namespace, "sp-code"): {MONITOR},
        (SERVE_NAMESPACE, "sp-serve"): {SERVE},
    }
    for place, identities in places.items():
        arn = accounts[place]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        policy = rendered_json(f"iam/policies/{arn.removeprefix(prefix)}.json")
        keys = {SAMPLE[f"SP_SIGNER_{i.upper()}_KEY_ARN"] for i in identities}
        assert signing_grants(policy) == keys, place
