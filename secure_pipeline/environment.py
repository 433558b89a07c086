"""Which environment the code location runs in, and what that environment must provide.

This is the one module that reads process environment variables. Everything else asks it, so
there is one place that decides the environment and one list of the variables each environment
needs. Values are read when definitions are built or a command runs, never at import time.

* ``local`` (the default): the embedded setup. Nothing but the repository is needed: Dagster's
  SQLite instance and a filesystem snapshot store under ``SECURE_PIPELINE_HOME``.
* ``production``: everything comes from the environment. A missing or invalid variable is an
  error, and every problem is reported in one message, so a deployment is fixed in one pass
  instead of one restart per variable.

Resources receive configuration as ``dg.EnvVar`` so values are resolved at run time and never
shown in the Dagster UI; this module only decides *whether* a variable is present and valid.
"""

import enum
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from secure_pipeline.errors import ConfigurationError
from secure_pipeline.redaction import redact_text

ENV_VAR = "SECURE_PIPELINE_ENV"


class Environment(enum.Enum):
    """The two supported environments."""

    LOCAL = "local"
    PRODUCTION = "production"


@dataclass(frozen=True)
class Setting:
    """One environment variable the project reads.

    Attributes:
        name: The variable's name.
        description: What it configures, shown in error messages and the README.
        required_in_production: Whether production refuses to start without it.
    """

    name: str
    description: str
    required_in_production: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(ENV_VAR, "`local` (default) or `production`."),
    Setting(
        "SECURE_PIPELINE_HOME",
        "Local state (snapshot store, audit trail); default `$DAGSTER_HOME`, else "
        "`./.secure_pipeline`.",
    ),
    Setting(
        "SECURE_PIPELINE_SOURCE_URI",
        "Location of the reference pipeline's source files (`file://`, `https://`, `s3://`); "
        "default: the bundled copy of the data. Required in production.",
    ),
    Setting(
        "SECURE_PIPELINE_LANDING_URI",
        "S3 landing zone (`s3://bucket/prefix/`) of the reference pipeline: each complete batch "
        "folder arriving there is ingested once.",
    ),
    Setting("SECURE_PIPELINE_CA_BUNDLE", "PEM bundle of CAs trusted for https sources."),
    Setting(
        "SECURE_PIPELINE_SOURCE_TLS_PINS",
        "Comma-separated SHA-256 fingerprints of accepted https source certificates.",
    ),
    Setting(
        "SECURE_PIPELINE_S3_BUCKET",
        "Bucket holding snapshots and the audit trail; setting it locally opts into S3 storage.",
        required_in_production=True,
    ),
    Setting(
        "SECURE_PIPELINE_S3_ENDPOINT",
        "S3 endpoint URL (https; plain http only to a loopback address in `local`).",
    ),
    Setting("SECURE_PIPELINE_S3_KMS_KEY_ID", "KMS key id for SSE-KMS on every object written."),
    Setting("AWS_REGION", "Region of the bucket.", required_in_production=True),
    Setting(
        "MLFLOW_TRACKING_URI",
        "MLflow tracking server for training runs; default: a SQLite store under "
        "SECURE_PIPELINE_HOME.",
        required_in_production=True,
    ),
    Setting(
        "SECURE_PIPELINE_MLFLOW_UI_URL",
        "Base URL of the MLflow web UI (http(s)), for links from Dagster metadata to runs and "
        "model versions; default: MLFLOW_TRACKING_URI when it is http(s), else no links.",
    ),
    Setting(
        "SECURE_PIPELINE_SIGNING_MODE",
        "`key`, `certificate` or `sigstore`; locally unset means a generated dev key.",
        required_in_production=True,
    ),
    Setting("SECURE_PIPELINE_SIGNING_KEY", "PEM EC private key (key and certificate modes)."),
    Setting("SECURE_PIPELINE_SIGNING_KEY_PASSWORD", "Password of the signing key, if any."),
    Setting("SECURE_PIPELINE_SIGNING_CERT", "Signing certificate (certificate mode)."),
    Setting("SECURE_PIPELINE_SIGNING_CHAIN", "Comma-separated chain certificates (certificate)."),
    Setting("SECURE_PIPELINE_SIGSTORE_IDENTITY", "OIDC identity used for keyless signing."),
    Setting(
        "SECURE_PIPELINE_TRUST_POLICY",
        "JSON file naming trusted signer keys, CA roots, Sigstore identities and approvers; "
        "locally unset means the dev key.",
        required_in_production=True,
    ),
    Setting(
        "SECURE_PIPELINE_TRUST_ROOT",
        "Comma-separated fingerprints of the root keys that sign the trust policy "
        "(`secure-pipeline trust show` prints them). Production needs this or "
        "SECURE_PIPELINE_TRUST_POLICY_SHA256.",
    ),
    Setting(
        "SECURE_PIPELINE_TRUST_POLICY_SHA256",
        "The digest the trust policy document must have (pins an unsigned policy).",
    ),
    Setting(
        "SECURE_PIPELINE_CODE_LOCATION",
        "Module of the code location whose pipelines the command line works on (default "
        "`secure_pipeline.definitions`); it has `pipelines()` or `defs`.",
    ),
    Setting(
        "SECURE_PIPELINE_DEV_KEYS",
        "Directory of the local development keys and their ledger (outside "
        "SECURE_PIPELINE_HOME); default `~/.local/share/secure-pipeline/dev-keys`.",
    ),
    *(
        Setting(
            f"SECURE_PIPELINE_SIGNER_{identity.upper()}",
            f"Private key URI of the {identity} identity (`file2:/path/key.pem`, "
            "`awskms:<key>`, ...); its public key must be the trust policy's. Locally unset "
            "means its development key.",
        )
        for identity in ("ingest", "train", "release", "gate", "monitor", "privacy", "serve")
    ),
    Setting(
        "SECURE_PIPELINE_DATA_KEYRING",
        "Where the keys of encrypted snapshots (those holding personal data) are kept: `kms` "
        "(AWS KMS, one key per snapshot; the production default and the only choice there) or "
        "`local` (the embedded default: key files beside the development keys).",
    ),
    Setting(
        "SECURE_PIPELINE_KMS_ENDPOINT",
        "Custom AWS KMS endpoint URL for the data keyring (https; plain http only to a "
        "loopback address in `local`).",
    ),
    Setting(
        "SECURE_PIPELINE_PSEUDONYM_KEY",
        "Secret (hex or base64, at least 32 bytes) from which each pipeline's pseudonymisation "
        "key is derived (personal columns kept as keyed hashes). Production refuses to "
        "pseudonymise without it; locally unset means a random per-pipeline key generated "
        "beside the development keys.",
    ),
    Setting(
        "SECURE_PIPELINE_EXECUTOR",
        "`kubernetes` (the production default: each stage job's steps run as pods in the "
        "stage's namespace) or `local` (the local default; a single-host deployment: a stage "
        "job's steps in its run's process, a process per step when run configuration asks; "
        "`multiprocess` is its earlier name, still accepted).",
    ),
    # The inference gateway's own settings: only the gateway process needs them, so the code
    # location does not require them in production; GatewayConfig.from_environment does.
    Setting(
        "SECURE_PIPELINE_GATEWAY_CERT", "PEM certificate (chain) the inference gateway serves."
    ),
    Setting("SECURE_PIPELINE_GATEWAY_KEY", "Private key of the gateway's certificate."),
    Setting(
        "SECURE_PIPELINE_GATEWAY_CLIENT_CA",
        "PEM bundle of the CAs whose client certificates the gateway accepts (mutual TLS).",
    ),
    Setting(
        "SECURE_PIPELINE_GATEWAY_IDENTITIES",
        'JSON file {"identities": {"<name>": ["<role>", ...]}}: who may call the gateway, with '
        "which roles (see deploy/gateway/README.md).",
    ),
    Setting(
        "SECURE_PIPELINE_GATEWAY_UPSTREAM_CERT",
        "The gateway's client certificate for the model-server slots (issued by the slot CA).",
    ),
    Setting(
        "SECURE_PIPELINE_GATEWAY_UPSTREAM_KEY", "Private key of the gateway's slot certificate."
    ),
    Setting(
        "SECURE_PIPELINE_GATEWAY_UPSTREAM_CA",
        "The slot CA: the model-server slots' certificates must chain to it (mutual TLS).",
    ),
    Setting(
        "SECURE_PIPELINE_GATEWAY_UPSTREAM_NAME",
        "The name the slots' certificate must carry; default slot.secure-pipeline.internal.",
    ),
    Setting(
        "SECURE_PIPELINE_SERVING_DIR",
        "A blue-green serving deployment (`secure-pipeline serving up`): promotion then stops at "
        "`challenger` and the `canary_analysis` asset releases it through a canary.",
    ),
    # OCI registries (`secure-pipeline oci ...`, `oci://` model references).
    Setting(
        "SECURE_PIPELINE_OCI_CA_BUNDLE",
        "PEM bundle of the CAs trusted for OCI registries (TLS 1.3); default: the system CAs.",
    ),
    Setting(
        "SECURE_PIPELINE_OCI_USERNAME",
        "User name for OCI registries; unset: the docker config (`DOCKER_CONFIG`, else "
        "`~/.docker/config.json`) is read.",
    ),
    Setting(
        "SECURE_PIPELINE_OCI_PASSWORD",
        "Password or token for `SECURE_PIPELINE_OCI_USERNAME` (never logged).",
    ),
    Setting(
        "DOCKER_CONFIG", "Directory of the docker `config.json` holding OCI registry credentials."
    ),
    Setting("DAGSTER_HOME", "Dagster instance directory (holds `dagster.yaml`)."),
    Setting("DAGSTER_PG_HOST", "Postgres host of the Dagster instance.", True),
    Setting("DAGSTER_PG_PORT", "Postgres port of the Dagster instance (usually 5432).", True),
    Setting("DAGSTER_PG_USER", "Postgres user of the Dagster instance.", True),
    Setting("DAGSTER_PG_PASSWORD", "Postgres password of the Dagster instance.", True),
    Setting("DAGSTER_PG_DB", "Postgres database of the Dagster instance.", True),
)

_SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


def read(name: str) -> str | None:
    """Return the value of a registered variable, or None when unset or empty.

    Args:
        name: A variable listed in `SETTINGS`.

    Returns:
        The value with surrounding whitespace removed, or None.

    Raises:
        KeyError: When ``name`` is not a registered setting (a typo would otherwise read
            nothing and silently fall back to a default).
    """
    if name not in _SETTINGS_BY_NAME:
        raise KeyError(f"{name} is not a registered secure_pipeline setting")
    value = os.environ.get(name, "").strip()
    return value or None


def is_set(name: str) -> bool:
    """Whether a registered variable has a non-empty value."""
    return read(name) is not None


def current_environment() -> Environment:
    """Return the environment named by ``SECURE_PIPELINE_ENV`` (default ``local``).

    Raises:
        ConfigurationError: When the variable holds anything but ``local`` or ``production``.
            An unknown value is never treated as local: a typo in a production deployment
            must not silently fall back to the embedded setup.
    """
    value = read(ENV_VAR)
    if value is None:
        return Environment.LOCAL
    try:
        return Environment(value.lower())
    except ValueError:
        raise ConfigurationError(
            f"{ENV_VAR} must be 'local' or 'production', found {value!r}. Unset it for the "
            "embedded local setup or set it to 'production'."
        ) from None


def secure_pipeline_home() -> Path:
    """Directory for local state: ``SECURE_PIPELINE_HOME``, else ``$DAGSTER_HOME``, else ./."""
    home = read("SECURE_PIPELINE_HOME") or read("DAGSTER_HOME")
    return Path(home).expanduser().resolve() if home else Path.cwd() / ".secure_pipeline"


def is_loopback_url(url: str) -> bool:
    """Whether a URL points at this machine (127.0.0.0/8, ::1 or localhost)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a DNS name such as 127.attacker.example is not loopback
        return False


# ``local``: one host, a stage job's steps in its run's process (a process per step when run
# configuration asks). ``multiprocess`` is its earlier name, still accepted.
EXECUTORS = ("kubernetes", "local", "multiprocess")


def executor_mode(environment: Environment) -> str:
    """Where steps run: ``SECURE_PIPELINE_EXECUTOR``, else by environment.

    Production defaults to Kubernetes; a production deployment on one host (air-gapped, no
    cluster) sets ``local`` explicitly, so it is never chosen by accident. On one host a stage
    job's steps run in its run's process unless run configuration asks for a process per step
    (see `secure_pipeline.orchestration.jobs.local_executor`).

    Returns:
        ``kubernetes`` or ``local`` (``multiprocess``, the earlier name, reads as ``local``).
    """
    value = read("SECURE_PIPELINE_EXECUTOR")
    if value is None:
        return "kubernetes" if environment is Environment.PRODUCTION else "local"
    value = value.lower()
    return "local" if value == "multiprocess" else value


def _read_any(name: str) -> str | None:
    """Read a variable a pipeline spec declared (its source location), registered or not."""
    value = os.environ.get(name, "").strip()
    return value or None


def configure_mlflow() -> None:
    """Settings MLflow reads from the process environment, set before it is used.

    Pickle deserialization is always switched off: the project never loads pickles, and MLflow
    must not either, whatever the process environment says. ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``
    set to anything else is overridden with a warning, not obeyed (MLflow's own default is to
    allow pickles). Download progress bars, which only clutter run logs, are switched off unless
    already set. MLflow reads both when it acts, so calling this before the first MLflow call of
    a process is enough.
    """
    import logging

    variable = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    value = os.environ.get(variable)
    # MLflow reads "false" and "0" (any case) as off; everything else, or unset, means allowed.
    if value is not None and value.strip().lower() not in ("false", "0"):
        logging.getLogger(__name__).warning(
            "%s is set to %r; secure_pipeline forces it to 'false' (models are never loaded "
            "from pickles). Remove it from the environment.",
            variable,
            value,
        )
    os.environ[variable] = "false"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def problems(
    environment: Environment,
    source_variables: Mapping[str, str] | None = None,
    required: Sequence[str] | None = None,
) -> list[str]:
    """List every missing or invalid variable for ``environment``, one line each.

    Args:
        environment: The environment to check.
        source_variables: Variables naming source locations, declared by the pipeline specs
            being loaded, with what each configures. Required in production.
        required: The variables a process needs in production, when it needs fewer than the
            code location (the model server needs no Dagster database or signer).

    Returns:
        Human-readable problems; empty when the environment is complete.
    """
    found: list[str] = []
    if environment is Environment.PRODUCTION:
        for setting in SETTINGS:
            needed = (
                setting.required_in_production if required is None else setting.name in required
            )
            if needed and not is_set(setting.name):
                found.append(f"{setting.name} is not set: {setting.description}")
        for name, description in (source_variables or {}).items():
            if _read_any(name) is None:
                found.append(f"{name} is not set: {description}")
    needs_policy = required is None or "SECURE_PIPELINE_TRUST_POLICY" in required
    if (
        environment is Environment.PRODUCTION
        and needs_policy
        and not (
            is_set("SECURE_PIPELINE_TRUST_ROOT") or is_set("SECURE_PIPELINE_TRUST_POLICY_SHA256")
        )
    ):
        found.append(
            "SECURE_PIPELINE_TRUST_ROOT is not set (nor SECURE_PIPELINE_TRUST_POLICY_SHA256): "
            "production accepts only a trust policy signed by a pinned root key or pinned by "
            "digest, so whoever can write the policy file cannot trust their own key"
        )
    executor = read("SECURE_PIPELINE_EXECUTOR")
    if executor is not None and executor.lower() not in EXECUTORS:
        found.append(f"SECURE_PIPELINE_EXECUTOR must be one of {EXECUTORS}, found {executor!r}")
    tracking = read("MLFLOW_TRACKING_URI")
    if environment is Environment.PRODUCTION and tracking and urlsplit(tracking).scheme != "https":
        found.append(
            f"MLFLOW_TRACKING_URI must be an https:// tracking server in production, found "
            f"{urlsplit(tracking).scheme or '(no scheme)'}://...: models, lineage and metrics "
            "travel to it (trust an internal CA with MLFLOW_TRACKING_SERVER_CERT_PATH)"
        )
    endpoint = read("SECURE_PIPELINE_S3_ENDPOINT")
    if endpoint is not None:
        scheme = urlsplit(endpoint).scheme
        if scheme not in ("https", "http"):
            found.append(
                "SECURE_PIPELINE_S3_ENDPOINT must be an http(s) URL, found "
                f"{redact_text(endpoint)!r}"
            )
        elif scheme == "http" and (
            environment is Environment.PRODUCTION or not is_loopback_url(endpoint)
        ):
            found.append(
                "SECURE_PIPELINE_S3_ENDPOINT must use https"
                + (" in production" if environment is Environment.PRODUCTION else "")
                + f", found {redact_text(endpoint)!r}; plain http is accepted only for a "
                "loopback test server in the local environment."
            )
    if (
        environment is Environment.LOCAL
        and is_set("SECURE_PIPELINE_S3_BUCKET")
        and not (is_set("AWS_REGION") or endpoint is not None)
    ):
        found.append(
            "SECURE_PIPELINE_S3_BUCKET is set but neither AWS_REGION nor "
            "SECURE_PIPELINE_S3_ENDPOINT is"
        )
    for name in source_variables or {}:
        source = _read_any(name)
        if source is None:
            continue
        scheme = urlsplit(source).scheme
        if scheme not in ("file", "https", "s3"):
            found.append(
                f"{name} must be a file://, https:// or s3:// URI, found scheme "
                f"{scheme or '(none)'!r}"
            )
        elif environment is Environment.PRODUCTION and scheme == "file":
            found.append(
                f"{name} must be https:// or s3:// in production, found a file:// URI: "
                "production ingests over encrypted connectors only"
            )
    return found


def validate(
    environment: Environment | None = None,
    source_variables: Mapping[str, str] | None = None,
    required: Sequence[str] | None = None,
) -> Environment:
    """Check the environment and raise one error naming every problem.

    Args:
        environment: The environment to check; the current one when None.
        source_variables: Source-location variables of the pipelines being loaded.
        required: The production variables this process needs (default: the code location's).

    Returns:
        The environment that was checked.

    Raises:
        ConfigurationError: When any variable is missing or invalid.
    """
    environment = environment or current_environment()
    found = problems(environment, source_variables, required)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise ConfigurationError(
            f"The {environment.value} environment is not configured: {len(found)} "
            f"problem(s):\n{lines}\nSet these variables (see the README's production section) "
            f"or unset {ENV_VAR} for the embedded local setup."
        )
    return environment
