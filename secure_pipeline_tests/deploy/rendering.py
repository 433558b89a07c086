"""The deploy/ templates rendered with sample values, as tests read them."""

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TEMPLATE_DIRS = ("helm", "k8s", "iam", "s3", "istio")

# Realistic values of the right shape; nothing here is a real account or secret.
SAMPLE: dict[str, str] = {
    "SP_ACCOUNT_ID": "123456789012",
    "SP_REGION": "eu-west-1",
    "SP_OIDC_PROVIDER": "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
    "SP_BUCKET": "sp-prod-snapshots",
    "SP_KMS_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "SP_KMS_CIDR": "10.20.32.0/24",
    # Two pinned roots: the current one and its successor, as during a root rotation.
    "SP_TRUST_ROOT": f"{'a1' * 32},{'0f' * 32}",
    # One asymmetric (ECC_NIST_P256, SIGN_VERIFY) key per signing identity.
    "SP_SIGNER_INGEST_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/1e7d3a1c-0000-4000-8000-1",
    "SP_SIGNER_TRAIN_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/2e7d3a1c-0000-4000-8000-1",
    "SP_SIGNER_RELEASE_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/3e7d3a1c-0000-4000-8000-1",
    "SP_SIGNER_GATE_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/4e7d3a1c-0000-4000-8000-1",
    "SP_SIGNER_MONITOR_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/5e7d3a1c-0000-4000-8000-1",
    "SP_SIGNER_PRIVACY_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/6e7d3a1c-0000-4000-8000-1",
    "SP_SIGNER_SERVE_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/7e7d3a1c-0000-4000-8000-1",
    "SP_LANDING_BUCKET": "sp-prod-landing",
    "SP_LANDING_PREFIX": "adult/",
    "SP_SOURCE_URI": "s3://sp-prod-landing/adult/current/",
    "SP_MLFLOW_URI": "https://mlflow.mlflow.svc.cluster.local",
    "SP_MLFLOW_NAMESPACE": "mlflow",
    "SP_MLFLOW_SERVICE_ACCOUNT": "mlflow-server",
    "SP_MLFLOW_APP_LABEL": "mlflow",
    "SP_MLFLOW_PORT": "8443",
    "SP_MLFLOW_ARTIFACT_BUCKET": "sp-prod-mlflow",
    "SP_S3_CIDR": "10.20.30.0/24",
    "SP_STS_CIDR": "10.20.31.0/24",
    "SP_SOURCE_CIDR": "192.0.2.0/28",
    "SP_OCI_REGISTRY_CIDR": "10.20.50.0/28",
    "SP_PG_HOST": "dagster.cluster-abc.eu-west-1.rds.amazonaws.com",
    "SP_PG_DB": "dagster",
    "SP_PG_USER": "dagster",
    "SP_PG_PORT": "5432",
    "SP_PG_CIDR": "10.20.40.0/24",
    "SP_K8S_API_CIDR": "10.20.0.0/28",
    "SP_INGRESS_NAMESPACE": "ingress-nginx",
    "SP_IMAGE_REPOSITORY": "registry.internal.example/secure-pipeline",
    "SP_IMAGE_TAG": "0.1.0",
}


def render_variables() -> tuple[str, ...]:
    """The variables deploy/render.sh substitutes (its VARIABLES array), in order."""
    text = (DEPLOY / "render.sh").read_text()
    match = re.search(r"^VARIABLES=\(\n(.*?)^\)", text, flags=re.M | re.S)
    assert match, "deploy/render.sh has no VARIABLES=( ... ) array"
    return tuple(line.strip() for line in match.group(1).splitlines() if line.strip())


def templates() -> list[Path]:
    """Every template file under deploy/{helm,k8s,iam,s3,istio}."""
    return sorted(p for d in TEMPLATE_DIRS for p in (DEPLOY / d).rglob("*") if p.is_file())


_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def render(text: str, values: dict[str, str] | None = None) -> str:
    """Substitute the ``${NAME}`` placeholders as deploy/render.sh does; an unknown name raises.

    Other ``$`` uses are left alone: Kubernetes expands ``$(VAR)`` in container arguments.

    Args:
        text: A template.
        values: Values of the placeholders (default: `SAMPLE`).
    """
    known = values or SAMPLE
    return _PLACEHOLDER.sub(lambda match: known[match.group(1)], text)


@cache
def rendered(relative: str) -> str:
    """A template under deploy/, rendered with `SAMPLE`."""
    return render((DEPLOY / relative).read_text())


def rendered_yaml(relative: str) -> list[dict[str, Any]]:
    """The YAML documents of a rendered template (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(rendered(relative)) if doc]


def rendered_json(relative: str) -> dict[str, Any]:
    """A rendered JSON template."""
    return json.loads(rendered(relative))


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object of deploy/k8s/, rendered."""
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in rendered_yaml(f"k8s/{path.name}")
    ]


def of_kind(kind: str) -> list[dict[str, Any]]:
    """The rendered manifests of one kind."""
    return [m for m in manifests() if m["kind"] == kind]


def helm_values() -> dict[str, Any]:
    """deploy/helm/values.yaml, rendered."""
    (values,) = rendered_yaml("helm/values.yaml")
    return values
