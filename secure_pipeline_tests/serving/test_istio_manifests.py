"""deploy/istio/: the mesh equivalent of the gateway, checked offline.

Kubernetes kinds are validated strictly with the kubernetes client's models (the deploy tests'
validator); Istio kinds against the field lists in istio_lint; then names, hosts, labels,
weights and principals must agree across the files.
"""

import copy
import re
from typing import Any

import pytest

from secure_pipeline_tests.deploy.k8s_strict import validate_manifest
from secure_pipeline_tests.deploy.rendering import SAMPLE, of_kind, render_variables
from secure_pipeline_tests.serving.istio_lint import (
    ISTIO_DIR,
    ISTIO_KINDS,
    NAMESPACE,
    consistency_problems,
    documents,
    schema_problems,
)

DOCS = documents(SAMPLE)


def _name(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def test_every_placeholder_is_one_render_sh_fills() -> None:
    text = "".join(p.read_text() for p in ISTIO_DIR.glob("*.yaml"))
    assert set(re.findall(r"\$\{([^}]*)\}", text)) <= set(render_variables())


def test_expected_kinds_all_in_the_serving_namespace() -> None:
    kinds = sorted(d["kind"] for d in DOCS)
    assert kinds == sorted(
        ["PeerAuthentication", "AuthorizationPolicy", "AuthorizationPolicy",
         "AuthorizationPolicy", "AuthorizationPolicy", "DestinationRule", "VirtualService",
         "Service", "Deployment", "Deployment", "NetworkPolicy", "NetworkPolicy"]
    )  # fmt: skip
    assert {d["metadata"]["namespace"] for d in DOCS} == {NAMESPACE}


@pytest.mark.parametrize("doc", [d for d in DOCS if d["kind"] in ISTIO_KINDS], ids=_name)
def test_istio_objects_use_known_fields(doc: dict[str, Any]) -> None:
    assert schema_problems(doc) == []


@pytest.mark.parametrize("doc", [d for d in DOCS if d["kind"] not in ISTIO_KINDS], ids=_name)
def test_kubernetes_objects_are_strictly_valid(doc: dict[str, Any]) -> None:
    validate_manifest(doc)


def test_names_labels_hosts_and_weights_agree() -> None:
    assert consistency_problems(DOCS) == []


def test_the_example_is_a_ten_percent_canary_on_green() -> None:
    route = _one(DOCS, "VirtualService")["spec"]["http"][0]["route"]
    assert {r["destination"]["subset"]: r["weight"] for r in route} == {"blue": 90, "green": 10}


def test_roles_map_principals_to_paths_and_methods() -> None:
    def grants(name: str) -> tuple[set[str], set[tuple[str, str]]]:
        (rule,) = _one(DOCS, "AuthorizationPolicy", name)["spec"]["rules"]
        principals = {p for f in rule["from"] for p in f["source"]["principals"]}
        operations = {
            (m, p) for t in rule["to"] for m in t["operation"]["methods"]
            for p in t["operation"]["paths"]
        }  # fmt: skip
        return principals, operations

    predict, admin = grants("model-server-predict"), grants("model-server-admin")
    assert predict[1] == {("POST", "/predict")}
    assert admin[1] == {("GET", "/metrics"), ("GET", "/readyz")}
    assert not predict[0] & admin[0]
    assert _one(DOCS, "AuthorizationPolicy", "deny-unauthenticated")["spec"] == {
        "action": "DENY",
        "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}],
    }


@pytest.mark.parametrize("slot", ["blue", "green"])
def test_slot_deployment_is_restricted_probed_and_pinned(slot: str) -> None:
    deployment = _one(DOCS, "Deployment", f"model-server-{slot}")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["image"] == f"{SAMPLE['SP_IMAGE_REPOSITORY']}:{SAMPLE['SP_IMAGE_TAG']}"
    env = {e["name"]: e["value"] for e in container["env"]}
    # Pinned: a registered model version number, never an alias that can move under the slot.
    assert re.fullmatch(r"models:/[a-z0-9_-]+/\d+", env["MODEL_REF"])
    assert "$(MODEL_REF)" in container["args"]
    assert container["args"][container["args"].index("--slot") + 1] == slot


def test_serving_objects_refer_to_what_deploy_k8s_creates() -> None:
    accounts = {
        (a["metadata"]["namespace"], a["metadata"]["name"]) for a in of_kind("ServiceAccount")
    }
    maps = {(c["metadata"]["namespace"], c["metadata"]["name"]) for c in of_kind("ConfigMap")}
    namespaces = {n["metadata"]["name"] for n in of_kind("Namespace")}
    assert NAMESPACE in namespaces
    for deployment in (d for d in DOCS if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert (NAMESPACE, pod["serviceAccountName"]) in accounts
        (container,) = pod["containers"]
        for source in container["envFrom"]:
            assert (NAMESPACE, source["configMapRef"]["name"]) in maps


def _mutated(change) -> list[dict[str, Any]]:  # noqa: ANN001 - a test callback
    docs = copy.deepcopy(DOCS)
    change(docs)
    return docs


def _find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return _one(docs, kind, name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _find(d, "PeerAuthentication")["spec"]["mtls"].update(mode="PERMISSIVE"),
         "STRICT PeerAuthentication"),
        (lambda d: _find(d, "DestinationRule")["spec"]["subsets"][1]["labels"].update(slot="gren"),
         "subset green"),
        (lambda d: _find(d, "DestinationRule")["spec"]["trafficPolicy"]["tls"]
         .update(mode="DISABLE"), "ISTIO_MUTUAL"),
        (lambda d: _find(d, "VirtualService")["spec"]["http"][0]["route"][1].update(weight=20),
         "sum to 110"),
        (lambda d: _find(d, "VirtualService")["spec"]["http"][0]["route"][1]["destination"]
         .update(subset="canary"), "unknown subset"),
        (lambda d: d.remove(_find(d, "AuthorizationPolicy", "deny-by-default")), "allow-nothing"),
        (lambda d: _find(d, "AuthorizationPolicy", "model-server-predict")["spec"]["rules"][0]
         ["from"][0]["source"].update(principals=["*"]), "not ns/<ns>/sa/<sa>"),
        (lambda d: _find(d, "AuthorizationPolicy", "model-server-admin")["spec"]["rules"][0]
         .pop("from"), "allows anyone"),
        (lambda d: _find(d, "Service")["spec"]["selector"].update(slot="blue"),
         "does not select the pods of model-server-green"),
    ],
    ids=["permissive", "subset-label", "tls-off", "weights", "unknown-subset", "no-deny-all",
         "wildcard-principal", "no-principals", "service-one-slot"],
)  # fmt: skip
def test_consistency_check_catches_mistakes(change, message: str) -> None:  # noqa: ANN001
    problems = consistency_problems(_mutated(change))
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["spec"].update(subset=r["spec"].pop("subsets")), "unknown field"),
        (lambda r: r["spec"]["trafficPolicy"]["tls"].update(mode="ISTIO_MTLS"), "is not one of"),
        (lambda r: r["spec"]["trafficPolicy"]["outlierDetection"].update(interval=10), "duration"),
        (lambda r: r.update(apiVersion="networking.istio.io/v1alpha9"), "apiVersion"),
    ],
    ids=["typo", "enum", "duration", "version"],
)
def test_istio_schema_check_catches_mistakes(change, message: str) -> None:  # noqa: ANN001
    rule = copy.deepcopy(_one(DOCS, "DestinationRule"))
    change(rule)
    assert any(message in p for p in schema_problems(rule))
