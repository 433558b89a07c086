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
    PINNED_MODEL,
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
    (route,) = _one(DOCS, "VirtualService")["spec"]["tls"]
    weights = {r["destination"]["subset"]: r["weight"] for r in route["route"]}
    assert weights == {"blue": 90, "green": 10}
    assert route["match"] == [
        {"port": 8443, "sniHosts": ["model-server.sp-serve.svc.cluster.local"]}
    ]


def test_only_the_gateway_and_the_controller_may_connect() -> None:
    """L4: the mesh cannot see into the slots' TLS; paths and roles are the gateway's."""

    def grants(name: str) -> tuple[set[str], set[str]]:
        (rule,) = _one(DOCS, "AuthorizationPolicy", name)["spec"]["rules"]
        principals = {p for f in rule["from"] for p in f["source"]["principals"]}
        (operation,) = [t["operation"] for t in rule["to"]]
        assert set(operation) == {"ports"}  # no paths or methods: they would never match
        return principals, set(operation["ports"])

    allowed = [p for p in DOCS if p["kind"] == "AuthorizationPolicy"
               and p["spec"].get("action", "ALLOW") == "ALLOW" and p["spec"]]  # fmt: skip
    assert sorted(p["metadata"]["name"] for p in allowed) == [
        "model-server-controller", "model-server-gateway",
    ]  # fmt: skip
    assert grants("model-server-gateway") == ({"cluster.local/ns/sp-gateway/sa/sp-gateway"},
                                              {"8443"})  # fmt: skip
    assert grants("model-server-controller") == (
        {"cluster.local/ns/sp-registry/sa/sp-registry"}, {"8443"},
    )  # fmt: skip
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
    # Probes run in the container, as clients of the slot CA over loopback (exec).
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):  # fmt: skip
        assert set(container[probe]) - {"periodSeconds", "timeoutSeconds", "failureThreshold"} == {
            "exec"
        }
        command = container[probe]["exec"]["command"]
        assert command[:4] == ["python", "-m", "secure_pipeline.serving.probe", path]
        assert _option(command, "--port") == "8443"
        assert _option(command, "--cert") == "/etc/secure-pipeline/probe/tls.crt"
        assert _option(command, "--ca") == "/etc/secure-pipeline/tls/ca.crt"
    # mutual TLS only, with the files of the read-only Secret model-server-tls
    args = container["args"]
    assert _option(args, "--port") == "8443"
    assert _option(args, "--tls-cert") == "/etc/secure-pipeline/tls/tls.crt"
    assert _option(args, "--tls-key") == "/etc/secure-pipeline/tls/tls.key"
    assert _option(args, "--client-ca") == "/etc/secure-pipeline/tls/ca.crt"
    assert [p["containerPort"] for p in container["ports"]] == [8443]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume, secret, path in (("tls", "model-server-tls", "/etc/secure-pipeline/tls"),
                                 ("probe-tls", "model-server-probe-tls",
                                  "/etc/secure-pipeline/probe")):  # fmt: skip
        assert mounts[volume] == {"name": volume, "mountPath": path, "readOnly": True}
        assert volumes[volume]["secret"]["secretName"] == secret
        assert volumes[volume]["secret"]["defaultMode"] == 0o440
    assert container["image"] == f"{SAMPLE['SP_IMAGE_REPOSITORY']}:{SAMPLE['SP_IMAGE_TAG']}"
    env = {e["name"]: e["value"] for e in container["env"]}
    # Pinned: a registered model version number, never an alias that can move under the slot.
    assert re.fullmatch(r"models:/[a-z0-9_-]+/\d+", env["MODEL_REF"])
    assert "$(MODEL_REF)" in container["args"]
    assert container["args"][container["args"].index("--slot") + 1] == slot


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("slot", ["blue", "green"])
def test_slot_reads_the_registry_ca_and_pull_credentials_read_only(slot: str) -> None:
    """For an oci:// MODEL_REF: the registry's CA and a docker config, never writable."""
    pod = _one(DOCS, "Deployment", f"model-server-{slot}")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SECURE_PIPELINE_OCI_CA_BUNDLE"] == "/etc/secure-pipeline/oci-ca/ca.crt"
    assert env["DOCKER_CONFIG"] == "/etc/secure-pipeline/oci-auth"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["oci-ca"] == {
        "name": "oci-ca", "mountPath": "/etc/secure-pipeline/oci-ca", "readOnly": True,
    }  # fmt: skip
    assert mounts["oci-auth"] == {
        "name": "oci-auth", "mountPath": "/etc/secure-pipeline/oci-auth", "readOnly": True,
    }  # fmt: skip
    # Optional: a slot serving models:/ starts without a registry configured.
    assert volumes["oci-ca"]["configMap"] == {
        "name": "sp-oci-ca", "optional": True, "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }  # fmt: skip
    assert volumes["oci-auth"]["secret"] == {
        "secretName": "sp-oci-pull",
        "optional": True,
        "defaultMode": 0o440,
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }


@pytest.mark.parametrize(
    "reference",
    [
        "models:/adult/12",
        "oci://registry.internal.example/models/adult@sha256:" + "ab" * 32,
        "oci://registry.internal.example:5000/models/adult:3@sha256:" + "0f" * 32,
    ],
)
def test_a_slot_may_serve_a_version_or_an_oci_digest(reference: str) -> None:
    def pin(docs: list[dict[str, Any]]) -> None:
        env = _slot_container(docs, "green")["env"]
        next(e for e in env if e["name"] == "MODEL_REF")["value"] = reference

    assert PINNED_MODEL.fullmatch(reference)
    assert consistency_problems(_mutated(pin)) == []


def test_the_service_exposes_only_the_mutual_tls_port() -> None:
    (port,) = _one(DOCS, "Service")["spec"]["ports"]
    assert port == {"name": "https", "port": 8443, "targetPort": "https", "protocol": "TCP",
                    "appProtocol": "https"}  # fmt: skip
    (policy,) = [n for n in DOCS if n["kind"] == "NetworkPolicy"
                 and n["metadata"]["name"] == "model-server-ingress"]  # fmt: skip
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8443}]
    namespaces = {f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for f in ingress["from"]}  # fmt: skip
    assert namespaces == {"sp-gateway", "sp-registry"}


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


def _slot_container(docs: list[dict[str, Any]], slot: str) -> dict[str, Any]:
    return _find(docs, "Deployment", f"model-server-{slot}")["spec"]["template"]["spec"][
        "containers"
    ][0]


def _slot_env(docs: list[dict[str, Any]], slot: str, name: str) -> dict[str, Any]:
    return next(e for e in _slot_container(docs, slot)["env"] if e["name"] == name)


def _slot_mount(docs: list[dict[str, Any]], slot: str, name: str) -> dict[str, Any]:
    return next(m for m in _slot_container(docs, slot)["volumeMounts"] if m["name"] == name)


def _slot_volume(docs: list[dict[str, Any]], slot: str, name: str) -> dict[str, Any]:
    pod = _find(docs, "Deployment", f"model-server-{slot}")["spec"]["template"]["spec"]
    return next(v for v in pod["volumes"] if v["name"] == name)


def _credentials_in_a_config_map(docs: list[dict[str, Any]], slot: str) -> None:
    volume = _slot_volume(docs, slot, "oci-auth")
    del volume["secret"]
    volume["configMap"] = {"name": "sp-oci-pull"}


def _drop_env(docs: list[dict[str, Any]], slot: str, name: str) -> None:
    container = _slot_container(docs, slot)
    container["env"] = [e for e in container["env"] if e["name"] != name]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _find(d, "PeerAuthentication")["spec"]["mtls"].update(mode="PERMISSIVE"),
         "STRICT PeerAuthentication"),
        (lambda d: _find(d, "DestinationRule")["spec"]["subsets"][1]["labels"].update(slot="gren"),
         "subset green"),
        (lambda d: _find(d, "DestinationRule")["spec"]["trafficPolicy"]["tls"]
         .update(mode="DISABLE"), "ISTIO_MUTUAL"),
        (lambda d: _find(d, "VirtualService")["spec"]["tls"][0]["route"][1].update(weight=20),
         "sum to 110"),
        (lambda d: _find(d, "VirtualService")["spec"]["tls"][0]["route"][1]["destination"]
         .update(subset="canary"), "unknown subset"),
        (lambda d: d.remove(_find(d, "AuthorizationPolicy", "deny-by-default")), "allow-nothing"),
        (lambda d: _find(d, "AuthorizationPolicy", "model-server-gateway")["spec"]["rules"][0]
         ["from"][0]["source"].update(principals=["*"]), "not ns/<ns>/sa/<sa>"),
        (lambda d: _find(d, "AuthorizationPolicy", "model-server-controller")["spec"]["rules"][0]
         .pop("from"), "allows anyone"),
        (lambda d: _find(d, "Service")["spec"]["selector"].update(slot="blue"),
         "does not select the pods of model-server-green"),
        # an L7 rule on the slots' TLS port never matches: the mesh would deny everything
        (lambda d: _find(d, "AuthorizationPolicy", "model-server-gateway")["spec"]["rules"][0]
         ["to"][0]["operation"].update(paths=["/predict"], methods=["POST"]), "never match"),
        (lambda d: _find(d, "VirtualService")["spec"].update(
            http=[{"route": _find(d, "VirtualService")["spec"].pop("tls")[0]["route"]}]),
         "an http route never applies"),
        (lambda d: _find(d, "VirtualService")["spec"]["tls"][0]["match"][0]
         .update(sniHosts=["slot.secure-pipeline.internal"]), "must match sniHosts"),
        (lambda d: _find(d, "Service")["spec"]["ports"][0].update(appProtocol="http",
                                                                 name="http"),
         "mutual-TLS port"),
        (lambda d: _slot_container(d, "blue")["args"].remove("--client-ca"),
         "started without --client-ca"),
        (lambda d: _slot_container(d, "green")["volumeMounts"][2].update(readOnly=False),
         "not in a Secret mounted read-only"),
        (lambda d: _slot_container(d, "blue").update(
            readinessProbe={"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}}),
         "must be an exec probe"),
        # what a slot serves must not move under it: no tag alone, no alias
        (lambda d: _slot_env(d, "green", "MODEL_REF").update(
            value="oci://registry.internal.example/models/adult:3"), "is not pinned"),
        (lambda d: _slot_env(d, "blue", "MODEL_REF").update(value="models:/adult@champion"),
         "is not pinned"),
        # the registry's CA and credentials: from read-only ConfigMap/Secret volumes only
        (lambda d: _slot_mount(d, "blue", "oci-auth").update(readOnly=False),
         "DOCKER_CONFIG /etc/secure-pipeline/oci-auth is not in a secret volume mounted"),
        (lambda d: _slot_mount(d, "green", "oci-ca").pop("readOnly"),
         "SECURE_PIPELINE_OCI_CA_BUNDLE /etc/secure-pipeline/oci-ca/ca.crt is not in a"),
        (lambda d: _slot_env(d, "blue", "SECURE_PIPELINE_OCI_CA_BUNDLE").update(
            value="/tmp/registry-ca.pem"), "not in a configMap or secret volume"),
        (lambda d: _credentials_in_a_config_map(d, "green"), "not in a secret volume"),
        (lambda d: _slot_volume(d, "blue", "oci-auth")["secret"].update(defaultMode=0o444),
         "readable by any user"),
        (lambda d: _slot_volume(d, "blue", "oci-auth")["secret"]["items"][0].update(mode=0o644),
         "readable by any user"),
        (lambda d: _slot_volume(d, "green", "oci-auth")["secret"]["items"][0].update(
            path=".dockerconfigjson"), "holds no config.json"),
        (lambda d: _drop_env(d, "blue", "DOCKER_CONFIG"), "DOCKER_CONFIG is not set"),
    ],
    ids=["permissive", "subset-label", "tls-off", "weights", "unknown-subset", "no-deny-all",
         "wildcard-principal", "no-principals", "service-one-slot", "l7-rule-on-tls",
         "http-route-on-tls", "wrong-sni", "plain-service-port", "no-client-ca",
         "writable-tls-mount", "https-probe", "oci-tag-alone", "alias",
         "writable-credentials", "writable-ca", "ca-outside-volumes", "credentials-in-configmap",
         "world-readable-credentials", "world-readable-item", "no-config-json",
         "no-docker-config"],
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
