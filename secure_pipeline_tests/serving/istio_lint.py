"""Offline checks of deploy/istio/: a field schema for the Istio kinds used, and consistency.

No Istio CRD schema is available offline, so the fields of the four Istio kinds the project
uses are listed here from the Istio v1 API reference (only the fields a typo could be confused
with matter: an unknown key is reported, as the API server's structural schema would prune or
refuse it). Kubernetes kinds are validated strictly with the client's models elsewhere.

Each check returns a list of problems (empty: clean), so a test can feed it a broken document.
"""

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ISTIO_DIR = ROOT / "deploy" / "istio"
NAMESPACE = "sp-serve"
SLOT_LABEL = "slot"
PRINCIPAL = re.compile(r"cluster\.local/ns/[a-z0-9-]+/sa/[a-z0-9-]+")
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")

# Per Istio kind: apiVersion, and for each object type the keys it may have. Types are named
# after the API reference; the nesting is in _FIELDS below.
ISTIO_KINDS = {
    "PeerAuthentication": ("security.istio.io/v1", "PeerAuthenticationSpec"),
    "AuthorizationPolicy": ("security.istio.io/v1", "AuthorizationPolicySpec"),
    "DestinationRule": ("networking.istio.io/v1", "DestinationRuleSpec"),
    "VirtualService": ("networking.istio.io/v1", "VirtualServiceSpec"),
}
_ENUMS = {
    "MtlsMode": {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"},
    "Action": {"ALLOW", "DENY", "AUDIT", "CUSTOM"},
    "TlsMode": {"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"},
}
# type -> {key: type of its value}; "[T]" is a list of T, "str"/"int"/"bool"/"duration" scalars,
# "labels" a str->str mapping.
_FIELDS: dict[str, dict[str, str]] = {
    "PeerAuthenticationSpec": {"selector": "Selector", "mtls": "Mtls", "portLevelMtls": "any"},
    "Selector": {"matchLabels": "labels"},
    "Mtls": {"mode": "MtlsMode"},
    "AuthorizationPolicySpec": {
        "selector": "Selector",
        "targetRef": "any",
        "targetRefs": "any",
        "action": "Action",
        "provider": "any",
        "rules": "[Rule]",
    },
    "Rule": {"from": "[From]", "to": "[To]", "when": "[Condition]"},
    "From": {"source": "Source"},
    "Source": {
        k: "[str]"
        for k in (
            "principals",
            "notPrincipals",
            "requestPrincipals",
            "notRequestPrincipals",
            "namespaces",
            "notNamespaces",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "serviceAccounts",
            "notServiceAccounts",
        )
    },
    "To": {"operation": "Operation"},
    "Operation": {
        k: "[str]"
        for k in (
            "hosts",
            "notHosts",
            "ports",
            "notPorts",
            "methods",
            "notMethods",
            "paths",
            "notPaths",
        )  # fmt: skip
    },
    "Condition": {"key": "str", "values": "[str]", "notValues": "[str]"},
    "DestinationRuleSpec": {
        "host": "str",
        "trafficPolicy": "TrafficPolicy",
        "subsets": "[Subset]",
        "exportTo": "[str]",
        "workloadSelector": "any",
    },
    "TrafficPolicy": {
        "loadBalancer": "any",
        "connectionPool": "ConnectionPool",
        "outlierDetection": "OutlierDetection",
        "tls": "ClientTls",
        "portLevelSettings": "any",
        "tunnel": "any",
        "proxyProtocol": "any",
    },
    "ConnectionPool": {"tcp": "TcpSettings", "http": "HttpSettings"},
    "TcpSettings": {
        "maxConnections": "int",
        "connectTimeout": "duration",
        "tcpKeepalive": "any",
        "maxConnectionDuration": "duration",
        "idleTimeout": "duration",
    },
    "HttpSettings": {
        "http1MaxPendingRequests": "int",
        "http2MaxRequests": "int",
        "maxRequestsPerConnection": "int",
        "maxRetries": "int",
        "idleTimeout": "duration",
        "h2UpgradePolicy": "str",
        "useClientProtocol": "bool",
        "maxConcurrentStreams": "int",
    },
    "OutlierDetection": {
        "splitExternalLocalOriginErrors": "bool",
        "consecutiveLocalOriginFailures": "int",
        "consecutiveGatewayErrors": "int",
        "consecutive5xxErrors": "int",
        "interval": "duration",
        "baseEjectionTime": "duration",
        "maxEjectionPercent": "int",
        "minHealthPercent": "int",
    },
    "ClientTls": {
        "mode": "TlsMode",
        "clientCertificate": "str",
        "privateKey": "str",
        "caCertificates": "str",
        "credentialName": "str",
        "subjectAltNames": "[str]",
        "sni": "str",
        "insecureSkipVerify": "bool",
    },
    "Subset": {"name": "str", "labels": "labels", "trafficPolicy": "TrafficPolicy"},
    "VirtualServiceSpec": {
        "hosts": "[str]",
        "gateways": "[str]",
        "http": "[HttpRoute]",
        "tls": "[TlsRoute]",
        "tcp": "any",
        "exportTo": "[str]",
    },
    "TlsRoute": {"match": "[TlsMatch]", "route": "[RouteDestination]"},
    "TlsMatch": {
        "sniHosts": "[str]",
        "destinationSubnets": "[str]",
        "port": "int",
        "sourceLabels": "labels",
        "gateways": "[str]",
        "sourceNamespace": "str",
    },
    "RouteDestination": {"destination": "Destination", "weight": "int"},
    "HttpRoute": {
        "name": "str",
        "match": "any",
        "route": "[HttpRouteDestination]",
        "redirect": "any",
        "directResponse": "any",
        "delegate": "any",
        "rewrite": "any",
        "timeout": "duration",
        "retries": "HttpRetry",
        "fault": "any",
        "mirror": "any",
        "mirrors": "any",
        "mirrorPercentage": "any",
        "corsPolicy": "any",
        "headers": "any",
    },
    "HttpRouteDestination": {"destination": "Destination", "weight": "int", "headers": "any"},
    "Destination": {"host": "str", "subset": "str", "port": "PortSelector"},
    "PortSelector": {"number": "int"},
    "HttpRetry": {
        "attempts": "int",
        "perTryTimeout": "duration",
        "retryOn": "str",
        "retryRemoteLocalities": "bool",
        "retryIgnorePreviousHosts": "bool",
        "backoff": "duration",
    },
}
_DURATION = re.compile(r"\d+(\.\d+)?(ms|s|m|h)")
# Service ports Istio treats as TLS it does not open: Envoy sees no HTTP on them.
_TLS_PROTOCOLS = ("https", "tls")
# Operation fields that need HTTP: on a TLS port a rule using them never matches.
_HTTP_FIELDS = ("paths", "notPaths", "methods", "notMethods", "hosts", "notHosts")
# The model server's mutual TLS: the options `secure-pipeline serve` must be started with.
_TLS_OPTIONS = ("--tls-cert", "--tls-key", "--client-ca")
# What a slot may serve: a registered version by number, or an OCI artifact by digest (a tag
# may accompany the digest, which wins); never an alias or a tag alone, which can move.
PINNED_MODEL = re.compile(
    r"models:/[a-z0-9_-]+/\d+"
    r"|oci://[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?"
    r"@sha256:[0-9a-f]{64}"
)
# The registry settings of an oci:// MODEL_REF: the CA file, and the docker config directory.
OCI_CA_VARIABLE = "SECURE_PIPELINE_OCI_CA_BUNDLE"
OCI_AUTH_VARIABLE = "DOCKER_CONFIG"


def render(text: str, values: dict[str, str]) -> str:
    """Fill ``${NAME}`` placeholders as deploy/render.sh does; an unknown name raises."""
    unknown = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if unknown:
        raise KeyError(f"unknown placeholders {unknown}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def documents(values: dict[str, str]) -> list[dict[str, Any]]:
    """Every object of deploy/istio/*.yaml, rendered with ``values``."""
    return [
        doc
        for path in sorted(ISTIO_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(render(path.read_text(), values))
        if doc
    ]


def schema_problems(document: dict[str, Any]) -> list[str]:
    """Unknown keys, wrong types and bad enum values of an Istio object."""
    kind = document.get("kind")
    name = document.get("metadata", {}).get("name")
    where = f"{kind}/{name}"
    if kind not in ISTIO_KINDS:
        return [f"{where}: not an Istio kind this project uses"]
    api_version, spec_type = ISTIO_KINDS[kind]
    problems = []
    if document.get("apiVersion") != api_version:
        problems.append(f"{where}: apiVersion must be {api_version}")
    if set(document) - {"apiVersion", "kind", "metadata", "spec"}:
        problems.append(f"{where}: unknown top-level keys {sorted(set(document) - {'spec'})}")
    metadata = document.get("metadata", {})
    if not metadata.get("name") or metadata.get("namespace") != NAMESPACE:
        problems.append(f"{where}: metadata needs a name and namespace {NAMESPACE}")
    return problems + _check(document.get("spec"), spec_type, f"{where}.spec")


def _check(value: Any, type_name: str, path: str) -> list[str]:
    if type_name == "any":
        return []
    if type_name.startswith("["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(value) for p in _check(item, type_name[1:-1],
                                                                  f"{path}[{i}]")]  # fmt: skip
    if type_name == "str":
        return [] if isinstance(value, str) else [f"{path}: expected a string, found {value!r}"]
    if type_name == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, found {value!r}"]
    if type_name == "bool":
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean"]
    if type_name == "duration":
        ok = isinstance(value, str) and _DURATION.fullmatch(value)
        return [] if ok else [f"{path}: expected a duration such as 10s, found {value!r}"]
    if type_name == "labels":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        return [] if ok else [f"{path}: expected string labels"]
    if type_name in _ENUMS:
        ok = value in _ENUMS[type_name]
        return [] if ok else [f"{path}: {value!r} is not one of {sorted(_ENUMS[type_name])}"]
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    fields = _FIELDS[type_name]
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            problems += _check(item, fields[key], f"{path}.{key}")
    return problems


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def consistency_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Names, hosts, labels and weights that must agree across the documents."""
    problems: list[str] = []
    deployments = _of_kind(docs, "Deployment")
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in deployments}
    slots = {labels.get(SLOT_LABEL) for labels in pods.values()}
    if slots != {"blue", "green"}:
        problems.append(
            f"Deployments must be one per slot blue/green, found {sorted(map(str, slots))}"
        )
    (service,) = _of_kind(docs, "Service") or [None]
    if service is None:
        return problems + ["no Service"]
    host = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    for name, labels in pods.items():
        if not _matches(service["spec"]["selector"], labels):
            problems.append(f"Service does not select the pods of {name}")
    (rule,) = _of_kind(docs, "DestinationRule") or [None]
    (virtual,) = _of_kind(docs, "VirtualService") or [None]
    if rule is None or virtual is None:
        return problems + ["a DestinationRule and a VirtualService are required"]
    if rule["spec"]["host"] != host:
        problems.append(f"DestinationRule host {rule['spec']['host']} is not {host}")
    if rule["spec"].get("trafficPolicy", {}).get("tls", {}).get("mode") != "ISTIO_MUTUAL":
        problems.append("DestinationRule must use ISTIO_MUTUAL")
    subsets = {s["name"]: s["labels"] for s in rule["spec"].get("subsets", [])}
    for subset, labels in subsets.items():
        selected = [n for n, pod in pods.items() if _matches(labels, pod)]
        if len(selected) != 1 or labels.get(SLOT_LABEL) != subset:
            problems.append(f"subset {subset} must select exactly its slot's pods, got {selected}")
    if virtual["spec"].get("hosts") != [host]:
        problems.append(f"VirtualService hosts must be [{host}]")
    ports = {p["port"] for p in service["spec"]["ports"]}
    tls_ports = _tls_ports(service)
    http_routes = virtual["spec"].get("http", [])
    tls_routes = virtual["spec"].get("tls", [])
    if tls_ports and http_routes:
        problems.append(
            f"VirtualService has http routes, but the Service's ports {sorted(tls_ports)} are TLS "
            "the mesh does not open: an http route never applies; use tls routes by SNI"
        )
    for index, route in enumerate(tls_routes):
        for match in route.get("match", []):
            if match.get("sniHosts") != [host]:
                problems.append(f"tls route {index} must match sniHosts [{host}]")
            if match.get("port") not in tls_ports:
                problems.append(
                    f"tls route {index} matches port {match.get('port')}, not a TLS port"
                )
    for index, route in enumerate([*http_routes, *tls_routes]):
        weights = 0
        for entry in route.get("route", []):
            destination = entry["destination"]
            weights += entry.get("weight", 0)
            if destination["host"] != host:
                problems.append(f"route destination {destination['host']} is not {host}")
            if destination.get("subset") not in subsets:
                problems.append(f"route names unknown subset {destination.get('subset')!r}")
            if destination.get("port", {}).get("number", next(iter(ports))) not in ports:
                problems.append("route destination port is not a Service port")
        if weights != 100:
            problems.append(f"route {route.get('name', index)} weights sum to {weights}, not 100")
    problems += _authorization_problems(docs, pods, tls_ports)
    problems += slot_tls_problems(deployments, service)
    problems += slot_oci_problems(deployments)
    return problems


def _tls_ports(service: dict[str, Any]) -> set[int]:
    """The Service's ports that carry TLS the mesh passes through (by appProtocol or name)."""
    return {
        port["port"]
        for port in service["spec"]["ports"]
        if port.get("appProtocol", "").lower() in _TLS_PROTOCOLS
        or port.get("name", "").split("-")[0].lower() in _TLS_PROTOCOLS
    }


def slot_tls_problems(deployments: list[dict[str, Any]], service: dict[str, Any]) -> list[str]:
    """Each slot serves its own mutual TLS, from read-only Secrets, and is probed by exec."""
    problems: list[str] = []
    if not _tls_ports(service) or _tls_ports(service) != {
        p["port"] for p in service["spec"]["ports"]
    }:
        problems.append("every Service port must be the slots' mutual-TLS port (appProtocol https)")
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        secrets = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for container in pod.get("containers", []):
            args = container.get("args", [])
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            for option in _TLS_OPTIONS:
                if option not in args or args.index(option) + 1 >= len(args):
                    problems.append(f"{name}: the model server is started without {option}")
                    continue
                path = args[args.index(option) + 1]
                mount = next((m for d, m in mounts.items() if path.startswith(d + "/")), None)
                if mount is None or mount["name"] not in secrets or not mount.get("readOnly"):
                    problems.append(f"{name}: {option} {path} is not in a Secret mounted read-only")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                check = container.get(probe)
                if check is None:
                    problems.append(f"{name}: no {probe}")
                elif set(check) & {"httpGet", "tcpSocket", "grpc"}:
                    problems.append(
                        f"{name}: {probe} must be an exec probe over the slot's mutual TLS (a "
                        "kubelet probe presents no client certificate)"
                    )
    return problems


def _mount_of(path: str, mounts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The volume mount that holds ``path`` (the mount point itself or a file below it)."""
    return next(
        (m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")),
        None,
    )


def slot_oci_problems(deployments: list[dict[str, Any]]) -> list[str]:
    """Each slot serves a pinned model and reads the OCI registry's CA and credentials read-only.

    The CA file (``SECURE_PIPELINE_OCI_CA_BUNDLE``) must come from a ConfigMap or Secret volume,
    the docker config directory (``DOCKER_CONFIG``) from a Secret volume whose
    ``.dockerconfigjson`` is mounted as ``config.json`` and that only the pod's user and group
    can read; both mounted read-only, so nothing in the pod can swap the trusted CA or the
    credentials.
    """
    problems: list[str] = []
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod.get("containers", []):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            mounts = container.get("volumeMounts", [])
            model = env.get("MODEL_REF")
            if model is None or not PINNED_MODEL.fullmatch(model):
                problems.append(
                    f"{name}: MODEL_REF {model!r} is not pinned: models:/<name>/<version> or "
                    "oci://<host>/<repository>@sha256:<digest>, never an alias or a tag alone"
                )
            for variable, kinds in ((OCI_CA_VARIABLE, ("configMap", "secret")),
                                    (OCI_AUTH_VARIABLE, ("secret",))):  # fmt: skip
                path = env.get(variable)
                if path is None:
                    problems.append(f"{name}: {variable} is not set for oci:// model references")
                    continue
                mount = _mount_of(path, mounts)
                volume = volumes.get(mount["name"], {}) if mount else {}
                source = next((kind for kind in kinds if kind in volume), None)
                if mount is None or source is None or not mount.get("readOnly"):
                    problems.append(
                        f"{name}: {variable} {path} is not in a {' or '.join(kinds)} volume "
                        "mounted read-only"
                    )
                    continue
                if variable == OCI_AUTH_VARIABLE:
                    problems += _docker_config_problems(name, path, mount, volume["secret"])
    return problems


def _docker_config_problems(
    name: str, path: str, mount: dict[str, Any], secret: dict[str, Any]
) -> list[str]:
    """The docker config Secret: config.json where DOCKER_CONFIG points, unreadable to others."""
    problems: list[str] = []
    relative = path.removeprefix(mount["mountPath"]).strip("/")
    wanted = f"{relative}/config.json".lstrip("/")
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    if items.get(wanted) != ".dockerconfigjson":
        problems.append(
            f"{name}: DOCKER_CONFIG {path} holds no config.json from the Secret's "
            f".dockerconfigjson (map it with items: key .dockerconfigjson, path {wanted})"
        )
    # Kubernetes' default mode is 0644; an item's own mode overrides the volume's.
    default = secret.get("defaultMode", 0o644)
    modes = [i.get("mode", default) for i in secret.get("items", [])] or [default]
    if any(mode & 0o007 for mode in modes):
        problems.append(
            f"{name}: the registry credentials are readable by any user (mode "
            f"{max(modes, key=lambda m: m & 0o007):#o}); use defaultMode 0440 with the pod's "
            "fsGroup"
        )
    return problems


def _authorization_problems(
    docs: list[dict[str, Any]], pods: dict[str, dict[str, str]], tls_ports: set[int]
) -> list[str]:
    problems: list[str] = []
    peers = _of_kind(docs, "PeerAuthentication")
    if not any(
        p["spec"].get("mtls", {}).get("mode") == "STRICT" and "selector" not in p["spec"]
        for p in peers
    ):
        problems.append("no namespace-wide STRICT PeerAuthentication")
    for peer in peers:
        for port, setting in (peer["spec"].get("portLevelMtls") or {}).items():
            if setting.get("mode") != "STRICT":
                problems.append(f"PeerAuthentication weakens mTLS on port {port}")
    policies = _of_kind(docs, "AuthorizationPolicy")
    if not any(p.get("spec") == {} for p in policies):
        problems.append("no allow-nothing AuthorizationPolicy (deny by default)")
    for policy in policies:
        spec, name = policy.get("spec") or {}, policy["metadata"]["name"]
        if spec.get("action", "ALLOW") != "ALLOW" or not spec:
            continue
        selector = spec.get("selector", {}).get("matchLabels")
        if not selector or not any(_matches(selector, labels) for labels in pods.values()):
            problems.append(f"{name}: selects no model-server pods")
        for rule in spec.get("rules", []):
            principals = [
                p for f in rule.get("from", []) for p in f["source"].get("principals", [])
            ]
            if not rule.get("from") or not principals:
                problems.append(f"{name}: an ALLOW rule without principals allows anyone")
            for principal in principals:
                if not PRINCIPAL.fullmatch(principal):
                    problems.append(f"{name}: principal {principal!r} is not ns/<ns>/sa/<sa>")
            operations = [t["operation"] for t in rule.get("to", [])]
            if not operations or any(not o.get("ports") for o in operations):
                problems.append(f"{name}: an ALLOW rule must name its ports")
            for operation in operations:
                ports = {int(p) for p in operation.get("ports", []) if str(p).isdigit()}
                http = [f for f in _HTTP_FIELDS if f in operation]
                if ports & tls_ports and http:
                    problems.append(
                        f"{name}: {', '.join(http)} on TLS port(s) {sorted(ports & tls_ports)} "
                        "never match (the mesh does not open the slots' TLS): name ports only"
                    )
                elif not ports & tls_ports and not (
                    operation.get("paths") and operation.get("methods")
                ):
                    problems.append(
                        f"{name}: an ALLOW rule on an HTTP port must name its paths and methods"
                    )
    return problems
