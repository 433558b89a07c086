#!/usr/bin/env bash
# Render the deployment templates (helm/, k8s/, iam/, s3/, istio/) with this installation's values.
#
#   SP_ACCOUNT_ID=123456789012 SP_REGION=eu-west-1 ... deploy/render.sh OUT_DIR
#
# Every variable below must be set and non-empty, or nothing is written and all missing ones are
# listed. Only these ${NAME} placeholders are replaced; any other ${...} in a template is an
# error, so no placeholder can survive into a manifest. Values are checked for shape (account
# id, ARNs, CIDRs, ports, key fingerprints) and may not contain spaces, quotes, "$", "{", "}" or
# "#", which keeps them from breaking out of a YAML or JSON string. deploy/README.md documents
# each variable.
set -euo pipefail

VARIABLES=(
  SP_ACCOUNT_ID
  SP_REGION
  SP_OIDC_PROVIDER
  SP_BUCKET
  SP_KMS_KEY_ARN
  SP_KMS_CIDR
  SP_TRUST_ROOT
  SP_SIGNER_INGEST_KEY_ARN
  SP_SIGNER_TRAIN_KEY_ARN
  SP_SIGNER_RELEASE_KEY_ARN
  SP_SIGNER_GATE_KEY_ARN
  SP_SIGNER_MONITOR_KEY_ARN
  SP_SIGNER_PRIVACY_KEY_ARN
  SP_SIGNER_SERVE_KEY_ARN
  SP_LANDING_BUCKET
  SP_LANDING_PREFIX
  SP_SOURCE_URI
  SP_MLFLOW_URI
  SP_MLFLOW_NAMESPACE
  SP_MLFLOW_SERVICE_ACCOUNT
  SP_MLFLOW_APP_LABEL
  SP_MLFLOW_PORT
  SP_MLFLOW_ARTIFACT_BUCKET
  SP_S3_CIDR
  SP_STS_CIDR
  SP_SOURCE_CIDR
  SP_OCI_REGISTRY_CIDR
  SP_PG_HOST
  SP_PG_DB
  SP_PG_USER
  SP_PG_PORT
  SP_PG_CIDR
  SP_K8S_API_CIDR
  SP_INGRESS_NAMESPACE
  SP_IMAGE_REPOSITORY
  SP_IMAGE_TAG
)

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUT_DIR   (renders deploy/{helm,k8s,iam,s3,istio} into OUT_DIR)" >&2
  exit 2
fi

missing=()
for name in "${VARIABLES[@]}"; do
  if [ -z "${!name:-}" ]; then
    missing+=("$name")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "refusing to render: not set: ${missing[*]} (see deploy/README.md)" >&2
  exit 1
fi

# The values travel as environment variables into the renderer; only the listed names are
# passed as arguments, so nothing else from the environment can be substituted.
exec python3 - "$(cd "$(dirname "$0")" && pwd)" "$1" "${VARIABLES[@]}" <<'PY'
import ipaddress
import os
import re
import sys
from pathlib import Path

source, target, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
if target.resolve() == source or source in target.resolve().parents:
    # Rendered files name accounts, buckets and networks, and would overwrite the templates.
    sys.exit(f"refusing to render into {target}: choose a directory outside deploy/")
values = {name: os.environ[name] for name in names}
problems = []
safe = re.compile(r"^[A-Za-z0-9._:/@+=,%~-]+$")
for name, value in values.items():
    if not safe.match(value):
        problems.append(f"{name} has characters outside [A-Za-z0-9._:/@+=,%~-]")
    elif name.endswith("_CIDR"):
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            problems.append(f"{name} is not a CIDR: {exc}")
        else:
            if network.prefixlen == 0:
                problems.append(f"{name} must not be a default route ({value})")
key_arn = r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$"
signer_keys = [name for name in names if name.startswith("SP_SIGNER_")]
checks = {
    "SP_ACCOUNT_ID": (r"^[0-9]{12}$", "a 12-digit AWS account id"),
    "SP_KMS_KEY_ARN": (key_arn, "a KMS key ARN (not an alias)"),
    # The root fingerprints pinned in SECURE_PIPELINE_TRUST_ROOT: SHA-256 of the DER public key,
    # as `secure-pipeline trust init` / `trust sign` print them.
    "SP_TRUST_ROOT": (r"^[0-9a-fA-F]{64}(,[0-9a-fA-F]{64})*$",
                      "one or more comma-separated 64-hex root key fingerprints"),
    # Key ARNs, not aliases: the IAM and key policies grant kms:Sign on exactly these.
    **{name: (key_arn, "a KMS key ARN (not an alias)") for name in signer_keys},
    "SP_MLFLOW_PORT": (r"^[0-9]{1,5}$", "a port number"),
    "SP_PG_PORT": (r"^[0-9]{1,5}$", "a port number"),
    "SP_LANDING_PREFIX": (r"^[^/].*/$", "a key prefix ending in / (no leading /)"),
    "SP_SOURCE_URI": (r"^(https|s3)://", "an https:// or s3:// URI"),
    "SP_MLFLOW_URI": (r"^https://", "an https:// URL"),
    "SP_OIDC_PROVIDER": (r"^[a-z0-9.-]+(/[A-Za-z0-9/._-]+)?$", "the issuer without https://"),
}
for name, (pattern, meaning) in checks.items():
    if name in values and safe.match(values[name]) and not re.match(pattern, values[name]):
        problems.append(f"{name} must be {meaning}, found {values[name]!r}")
for name in ("SP_MLFLOW_PORT", "SP_PG_PORT"):
    if values.get(name, "").isdigit() and not 0 < int(values[name]) < 65536:
        problems.append(f"{name} must be between 1 and 65535")
# awskms: signers use a KMS client of AWS_DEFAULT_REGION (SP_REGION); a key elsewhere would
# fail at the first signature, in the middle of a run.
for name in signer_keys:
    if re.match(key_arn, values[name]) and values[name].split(":")[3] != values["SP_REGION"]:
        problems.append(f"{name} must be a key in SP_REGION ({values['SP_REGION']})")
# One key per identity, none shared with SSE-KMS: an identity is only as separate as its key.
keys = [values["SP_KMS_KEY_ARN"], *(values[name] for name in signer_keys)]
for name in signer_keys:
    if keys.count(values[name]) > 1:
        problems.append(f"{name} must be its own key, not shared with another identity or SSE")
if problems:
    sys.exit("refusing to render:\n  " + "\n  ".join(problems))

placeholder = re.compile(r"\$\{([^}]*)\}")
rendered = {}
for folder in ("helm", "k8s", "iam", "s3", "istio"):
    for path in sorted((source / folder).rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        unknown = sorted({m for m in placeholder.findall(text) if m not in values})
        if unknown:
            problems.append(f"{path.relative_to(source)}: unknown placeholder(s) {unknown}")
        rendered[path.relative_to(source)] = placeholder.sub(
            lambda m: values.get(m.group(1), m.group(0)), text
        )
if problems:
    sys.exit("refusing to render:\n  " + "\n  ".join(problems))
for relative, text in rendered.items():
    out = target / relative
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
print(f"rendered {len(rendered)} files into {target}")
PY
