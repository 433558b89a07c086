"""deploy/render.sh: all or nothing, only its own placeholders, and every variable documented."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from secure_pipeline_tests.deploy.rendering import (
    DEPLOY,
    SAMPLE,
    TEMPLATE_DIRS,
    render,
    render_variables,
    templates,
)

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="render.sh needs bash")


def _run(out: Path, values: dict[str, str]) -> subprocess.CompletedProcess:
    # A clean environment: nothing but PATH and the given values.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **values}
    return subprocess.run(
        [BASH, str(DEPLOY / "render.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_placeholders_are_exactly_the_documented_variables() -> None:
    variables = set(render_variables())
    assert variables == set(SAMPLE)
    used = {
        name
        for path in templates()
        for name in re.findall(r"\$\{([A-Za-z0-9_]+)\}", path.read_text())
    }
    assert used == variables, "a variable of render.sh is unused, or a template uses an unknown one"
    readme = (DEPLOY / "README.md").read_text()
    for name in variables:
        assert f"`{name}`" in readme, f"{name} is not documented in deploy/README.md"


def test_renders_every_template_with_no_placeholder_left(tmp_path: Path) -> None:
    result = _run(tmp_path, SAMPLE)
    assert result.returncode == 0, result.stderr
    outputs = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert outputs == sorted(p.relative_to(DEPLOY) for p in templates())
    for relative in outputs:
        text = (tmp_path / relative).read_text()
        assert "${" not in text, relative
        # The shell renderer and the tests' renderer agree byte for byte.
        assert text == render((DEPLOY / relative).read_text()), relative
        if relative.suffix == ".yaml":
            list(yaml.safe_load_all(text))
    assert {p.parts[0] for p in outputs} == set(TEMPLATE_DIRS)


def test_refuses_when_a_variable_is_missing(tmp_path: Path) -> None:
    missing = (
        "SP_BUCKET",
        "SP_PG_CIDR",
        "SP_TRUST_ROOT",
        "SP_SIGNER_GATE_KEY_ARN",
        "SP_SIGNER_PRIVACY_KEY_ARN",
        "SP_SIGNER_SERVE_KEY_ARN",
    )
    values = {k: v for k, v in SAMPLE.items() if k not in missing}
    values["SP_REGION"] = ""  # empty counts as missing
    result = _run(tmp_path / "out", values)
    assert result.returncode != 0
    for name in (*missing, "SP_REGION"):
        assert name in result.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SP_S3_CIDR", "0.0.0.0/0", "default route"),
        ("SP_PG_CIDR", "10.0.0.1/8", "not a CIDR"),
        ("SP_ACCOUNT_ID", "1234", "12-digit"),
        ("SP_KMS_KEY_ARN", "alias/sp", "KMS key ARN"),
        ("SP_PG_HOST", 'db" injected: "x', "characters outside"),
        ("SP_BUCKET", "b\nkind: Secret", "characters outside"),
        ("SP_MLFLOW_URI", "http://mlflow", "https://"),
        ("SP_MLFLOW_PORT", "70000", "between 1 and 65535"),
        ("SP_KMS_CIDR", "0.0.0.0/0", "default route"),
        ("SP_TRUST_ROOT", "a1" * 31, "64-hex root key fingerprints"),
        ("SP_TRUST_ROOT", "g1" * 32, "64-hex root key fingerprints"),
        ("SP_TRUST_ROOT", f"{'a1' * 32},", "64-hex root key fingerprints"),
        ("SP_TRUST_ROOT", f"sha256:{'a1' * 32}", "64-hex root key fingerprints"),
        ("SP_TRUST_ROOT", f"{'a1' * 32} {'0f' * 32}", "characters outside"),
        ("SP_SIGNER_TRAIN_KEY_ARN", "alias/sp-train", "KMS key ARN"),
        ("SP_SIGNER_TRAIN_KEY_ARN", "arn:aws:kms:eu-west-1:123456789012:alias/t", "KMS key ARN"),
        (
            "SP_SIGNER_GATE_KEY_ARN",
            SAMPLE["SP_SIGNER_GATE_KEY_ARN"].replace("eu-west-1", "us-east-1"),
            "a key in SP_REGION",
        ),
        ("SP_SIGNER_GATE_KEY_ARN", SAMPLE["SP_SIGNER_RELEASE_KEY_ARN"], "its own key"),
        ("SP_SIGNER_MONITOR_KEY_ARN", SAMPLE["SP_KMS_KEY_ARN"], "its own key"),
        ("SP_SIGNER_PRIVACY_KEY_ARN", SAMPLE["SP_SIGNER_INGEST_KEY_ARN"], "its own key"),
        ("SP_SIGNER_PRIVACY_KEY_ARN", "alias/sp-privacy", "KMS key ARN"),
        ("SP_SIGNER_SERVE_KEY_ARN", "alias/sp-serve", "KMS key ARN"),
        ("SP_SIGNER_SERVE_KEY_ARN", SAMPLE["SP_SIGNER_MONITOR_KEY_ARN"], "its own key"),
        (
            "SP_SIGNER_SERVE_KEY_ARN",
            SAMPLE["SP_SIGNER_SERVE_KEY_ARN"].replace("eu-west-1", "eu-central-1"),
            "a key in SP_REGION",
        ),
    ],
)
def test_refuses_malformed_values(tmp_path: Path, name: str, value: str, message: str) -> None:
    result = _run(tmp_path / "out", {**SAMPLE, name: value})
    assert result.returncode != 0
    assert name in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_refuses_to_write_into_deploy() -> None:
    result = _run(DEPLOY / "k8s", SAMPLE)
    assert result.returncode != 0
    assert "outside deploy/" in result.stderr
    assert "${SP_BUCKET}" in (DEPLOY / "k8s" / "40-configmaps.yaml").read_text()


def test_substitutes_only_its_own_variables(tmp_path: Path) -> None:
    source = tmp_path / "deploy"
    shutil.copytree(DEPLOY, source)
    (source / "k8s" / "99-extra.yaml").write_text("a: ${HOME}\n")
    result = subprocess.run(
        [BASH, str(source / "render.sh"), str(tmp_path / "out")],
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/root", **SAMPLE},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "unknown placeholder" in result.stderr
    assert "HOME" in result.stderr
