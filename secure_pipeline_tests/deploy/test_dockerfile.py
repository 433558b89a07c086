"""deploy/Dockerfile: a locked, non-root image without secrets, and a lint that can fail."""

import re

import pytest

from secure_pipeline_tests.deploy.lint import dockerfile_instructions, lint_dockerfile
from secure_pipeline_tests.deploy.rendering import DEPLOY, ROOT

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_passes_the_lint() -> None:
    assert lint_dockerfile(DOCKERFILE) == []


def test_image_serves_the_code_location_on_a_read_only_root() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    words = [w for w, _ in instructions]
    assert "ENTRYPOINT" not in words  # dagster-k8s and the chart pass the whole command as args
    (cmd,) = [a for w, a in instructions if w == "CMD"]
    assert '"-m", "secure_pipeline.definitions"' in cmd
    assert '"3030"' in cmd
    env = " ".join(a for w, a in instructions if w == "ENV")
    for setting in ("HOME=/tmp", "TMPDIR=/tmp", "UV_COMPILE_BYTECODE=1"):
        assert setting in env
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    assert ("USER", "10001:10001") in final


def test_uv_version_is_the_makefiles() -> None:
    (version,) = re.findall(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert f"ghcr.io/astral-sh/uv:{version}" in DOCKERFILE


def test_build_context_is_an_allow_list() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"
    copied = {
        a.split()[0]
        for w, a in dockerfile_instructions(DOCKERFILE)
        if w == "COPY" and not a.startswith("--from")
    }
    allowed = {r.removeprefix("!") for r in rules if r.startswith("!")}
    assert copied <= allowed | {"pyproject.toml", "uv.lock"}


BAD = {
    "root user": ("USER 10001:10001", "USER root"),
    "no user": ("USER 10001:10001\n", ""),
    "dev dependencies": ("uv sync --frozen --no-dev --no-editable", "uv sync --frozen"),
    "unlocked": ("uv sync --frozen --no-dev --no-install-project", "uv sync --no-dev"),
    "download": ("COPY README.md ./", "ADD https://example.com/setup.sh /tmp/"),
    "secret": ("PYTHONUNBUFFERED=1 \\", "PYTHONUNBUFFERED=1 AWS_SECRET_ACCESS_KEY=abc \\"),
    "password arg": ("ARG UV_IMAGE=", "ARG DB_PASSWORD=hunter2\nARG UV_IMAGE="),
    "untagged base": ("python:3.11.13-slim-bookworm\n", "python\n"),
    "latest base": ("uv:0.13.9\n", "uv:latest\n"),
}
MESSAGES = {
    "root user": "non-root",
    "no user": "sets no USER",
    "dev dependencies": "without --no-dev",
    "unlocked": "without --frozen",
    "download": "ADD from a URL",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "password arg": "DB_PASSWORD",
    "untagged base": "no tag or digest",
    "latest base": "latest tag",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_lint_reports_bad_dockerfiles(case: str) -> None:
    old, new = BAD[case]
    assert old in DOCKERFILE, f"test fixture out of date: {old!r}"
    problems = lint_dockerfile(DOCKERFILE.replace(old, new, 1))
    assert any(MESSAGES[case] in p for p in problems), problems
