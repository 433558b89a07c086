"""The two commands of the quick start: `make test`'s system check and `make demo`'s runner.

The prerequisites check runs on simulated machines: a PATH holding only the programs a test
gives it, and a filesystem root (``PREREQUISITES_ROOT``) where nginx, its njs module,
PostgreSQL, the distribution registry and htpasswd are absent or appear when the (simulated)
apt-get installs them. The demo runner launches real runs of a small code location into a
throwaway Dagster instance.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
PREREQUISITES = REPO / "scripts" / "test-prerequisites.sh"
DEMO = REPO / "scripts" / "demo.py"
BASH = shutil.which("bash")
DEBIAN = (
    "nginx libnginx-mod-http-js postgresql docker-registry apache2-utils prometheus "
    "prometheus-alertmanager jq"
)


def _tool_dir(tmp_path: Path, *, real: tuple[str, ...], fake: dict[str, str]) -> Path:
    """A directory to be the whole PATH: links to the named real programs, and fake scripts."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in real:
        (tools / name).symlink_to(shutil.which(name))
    for name, body in fake.items():
        (tools / name).write_text("#!/bin/sh\n" + textwrap.dedent(body))
        (tools / name).chmod(0o755)
    return tools


def _check(tools: Path, root: Path, *args: str, **more: str) -> tuple[int, str, float]:
    """Run the prerequisites script; return its exit code, its output and its wall time."""
    env = {"PATH": str(tools), "PYTHON": sys.executable, "PREREQUISITES_ROOT": str(root), **more}
    start = time.monotonic()
    done = subprocess.run(
        [BASH, str(PREREQUISITES), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


# A package manager for the simulated machine: records what it was asked, and "installs" the
# packages by creating what the check looks for under the simulated root.
FAKE_APT = """\
echo "$*" >> "$APT_CALLS"
[ "$1" = install ] || exit 0
for package in "$@"; do
  case "$package" in
    nginx) mkdir -p "$PREREQUISITES_ROOT/usr/sbin"
           printf '#!/bin/sh\\necho "--modules-path=%s" >&2\\n' \\
             "$PREREQUISITES_ROOT/usr/lib/nginx/modules" > "$PREREQUISITES_ROOT/usr/sbin/nginx"
           chmod 755 "$PREREQUISITES_ROOT/usr/sbin/nginx" ;;
    libnginx-mod-http-js) mkdir -p "$PREREQUISITES_ROOT/usr/lib/nginx/modules"
           : > "$PREREQUISITES_ROOT/usr/lib/nginx/modules/ngx_http_js_module.so" ;;
    postgresql) mkdir -p "$PREREQUISITES_ROOT/usr/lib/postgresql/15/bin"
           : > "$PREREQUISITES_ROOT/usr/lib/postgresql/15/bin/initdb" ;;
    docker-registry) mkdir -p "$PREREQUISITES_ROOT/usr/bin"
           : > "$PREREQUISITES_ROOT/usr/bin/docker-registry"
           chmod 755 "$PREREQUISITES_ROOT/usr/bin/docker-registry" ;;
    apache2-utils) mkdir -p "$PREREQUISITES_ROOT/usr/bin"
           : > "$PREREQUISITES_ROOT/usr/bin/htpasswd"
           chmod 755 "$PREREQUISITES_ROOT/usr/bin/htpasswd" ;;
    prometheus) mkdir -p "$PREREQUISITES_ROOT/usr/bin"
           : > "$PREREQUISITES_ROOT/usr/bin/prometheus"
           chmod 755 "$PREREQUISITES_ROOT/usr/bin/prometheus" ;;
    prometheus-alertmanager) mkdir -p "$PREREQUISITES_ROOT/usr/bin"
           : > "$PREREQUISITES_ROOT/usr/bin/amtool"
           chmod 755 "$PREREQUISITES_ROOT/usr/bin/amtool" ;;
    jq) mkdir -p "$PREREQUISITES_ROOT/usr/bin"
           : > "$PREREQUISITES_ROOT/usr/bin/jq"
           chmod 755 "$PREREQUISITES_ROOT/usr/bin/jq" ;;
  esac
done
"""


def test_missing_packages_stop_at_once_with_the_one_command(tmp_path):
    """Not root: nothing is installed, and the message is the command to run."""
    root = tmp_path / "root"
    root.mkdir()
    calls = tmp_path / "apt-calls"
    tools = _tool_dir(
        tmp_path,
        real=("make", "openssl", "sed", "env"),
        fake={"id": "echo 1000\n", "apt-get": FAKE_APT, "sudo": 'exec "$@"\n'},
    )
    code, output, seconds = _check(tools, root, APT_CALLS=str(calls))
    assert code == 1
    assert seconds < 10
    lines = output.splitlines()
    assert f"  sudo apt-get install -y {DEBIAN}" in lines
    assert sum("apt-get install" in line for line in lines) == 1
    assert "nginx: the inference gateway tests start a real nginx" in output
    assert "docker-registry: the OCI tests start a real distribution registry" in output
    assert "apache2-utils: htpasswd -B writes the test registry's password file" in output
    assert "prometheus: the monitoring tests run promtool and a real Prometheus" in output
    assert not calls.exists()


def test_without_apt_get_even_root_gets_the_command(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    tools = _tool_dir(tmp_path, real=("make", "openssl", "sed", "env"), fake={"id": "echo 0\n"})
    code, output, seconds = _check(tools, root)
    assert code == 1
    assert seconds < 10
    assert f"  apt-get install -y {DEBIAN}" in output.splitlines()


def test_as_root_with_apt_the_missing_packages_are_installed(tmp_path):
    """One `apt-get update`, one quiet install of exactly the missing packages, then a pass."""
    root = tmp_path / "root"
    root.mkdir()
    calls = tmp_path / "apt-calls"
    tools = _tool_dir(
        tmp_path,
        real=("make", "openssl", "sed", "env", "mkdir", "chmod"),
        fake={"id": "echo 0\n", "apt-get": FAKE_APT},
    )
    code, output, _ = _check(tools, root, APT_CALLS=str(calls))
    assert code == 0, output
    assert calls.read_text().splitlines() == ["update -qq", f"install -y -qq {DEBIAN}"]
    assert output.strip() == f"installing the Debian packages the tests need: {DEBIAN}"
    # The machine now has them: the next check installs nothing and says nothing.
    code, output, _ = _check(tools, root, APT_CALLS=str(calls))
    assert (code, output) == (0, "")
    assert len(calls.read_text().splitlines()) == 2


def test_a_package_apt_did_not_provide_is_reported(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    calls = tmp_path / "apt-calls"
    tools = _tool_dir(
        tmp_path,
        real=("make", "openssl", "sed", "env"),
        fake={"id": "echo 0\n", "apt-get": 'echo "$*" >> "$APT_CALLS"\n'},
    )
    code, output, _ = _check(tools, root, APT_CALLS=str(calls))
    assert code == 1
    assert f"still missing after apt-get install: {DEBIAN}" in output


def test_only_what_is_missing_is_asked_for(tmp_path):
    """A registry on PATH counts, as nginx's does; htpasswd absent from PATH and root is asked."""
    root = tmp_path / "root"
    root.mkdir()
    calls = tmp_path / "apt-calls"
    fake_apt = tmp_path / "fake-apt"
    fake_apt.write_text("#!/bin/sh\n" + FAKE_APT)
    fake_apt.chmod(0o755)
    tools = _tool_dir(
        tmp_path,
        real=("make", "openssl", "sed", "env", "mkdir", "chmod"),
        fake={"id": "echo 1000\n", "docker-registry": "exit 0\n"},
    )
    env = {"PATH": str(tools), "PREREQUISITES_ROOT": str(root), "APT_CALLS": str(calls)}
    others = ("install", "nginx", "libnginx-mod-http-js", "postgresql", "prometheus",
              "prometheus-alertmanager", "jq")  # fmt: skip
    subprocess.run([str(fake_apt), *others], env=env, check=True, timeout=30)
    code, output, _ = _check(tools, root, APT_CALLS=str(calls))
    assert code == 1
    assert "  sudo apt-get install -y apache2-utils" in output.splitlines()
    assert "docker-registry:" not in output


def test_this_machine_has_everything_and_the_check_is_quick():
    """The suite needs these packages; with them present the check passes silently."""
    start = time.monotonic()
    done = subprocess.run(
        [BASH, str(PREREQUISITES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert time.monotonic() - start < 5


def test_make_test_stops_before_any_python_work(tmp_path):
    """Through make: the check is the first step, and nothing after it runs."""
    root = tmp_path / "root"
    root.mkdir()
    tools = _tool_dir(
        tmp_path,
        real=("make", "bash", "openssl", "sed", "env"),
        fake={"id": "echo 1000\n"},
    )
    env = {"PATH": str(tools), "PREREQUISITES_ROOT": str(root)}
    start = time.monotonic()
    # RUN=false: should the check wrongly pass, the next step fails at once instead of linting.
    make = ["make", "-C", str(REPO), "--no-print-directory", "test", f"PYTHON={sys.executable}"]
    done = subprocess.run(
        [*make, "RUN=false"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert time.monotonic() - start < 10
    assert f"  sudo apt-get install -y {DEBIAN}" in done.stderr.splitlines()
    assert "ruff" not in done.stdout + done.stderr
    assert "false" not in done.stdout


def test_with_sudo_a_user_installs_through_it(tmp_path):
    """.ci/run's mode: CI may run as a user with sudo."""
    root = tmp_path / "root"
    root.mkdir()
    calls = tmp_path / "apt-calls"
    tools = _tool_dir(
        tmp_path,
        real=("make", "openssl", "sed", "env", "mkdir", "chmod"),
        fake={
            "id": "echo 1000\n",
            "apt-get": FAKE_APT,
            "sudo": 'echo sudo >> "$APT_CALLS"\nexec "$@"\n',
        },
    )
    code, output, _ = _check(tools, root, "--sudo", APT_CALLS=str(calls))
    assert code == 0, output
    assert calls.read_text().splitlines() == [
        "sudo", "update -qq", "sudo", f"install -y -qq {DEBIAN}"
    ]  # fmt: skip


def test_ci_uses_the_same_list():
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test-prerequisites.sh --sudo" in ci
    assert "apt-get" not in ci


# --- make demo ----------------------------------------------------------------------------


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_the_stage_jobs_in_order():
    assert _demo_module().stage_jobs("adult") == ["adult_ingest", "adult_train", "adult_release"]


def test_demo_next_commands(tmp_path):
    demo = _demo_module()
    uri = f"sqlite:///{Path.cwd() / '.dagster_home' / 'mlflow' / 'mlflow.db'}"
    home = Path.cwd() / ".dagster_home"
    commands = dict(demo.next_commands("adult", ".venv/bin", uri, str(home)))
    assert list(commands) == [
        "make ui",
        f"export DAGSTER_HOME={home}",
        ".venv/bin/mlflow ui --backend-store-uri sqlite:///.dagster_home/mlflow/mlflow.db",
        ".venv/bin/secure-pipeline verify models:/adult@champion",
        ".venv/bin/secure-pipeline evidence models:/adult@champion",
    ]
    assert "http://127.0.0.1:3000" in commands["make ui"]
    # Outside the working directory the store is named by its absolute path.
    outside = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert demo.mlflow_command(outside, ".venv/bin") == (
        f".venv/bin/mlflow ui --backend-store-uri {outside}"
    )
    block = demo.format_next(list(commands.items())).splitlines()
    assert block[0] == "next:"
    assert block[2::2] == [f"  {command}" for command in commands]
    assert all(line.startswith("  # ") for line in block[1::2])


def test_demo_result_lines():
    demo = _demo_module()
    ok = demo.StageResult("adult_ingest", "SUCCESS", 16.24, "run-1")
    assert demo.format_result(ok, 13) == "  adult_ingest   succeeded      16.2 s   run run-1"
    failed = demo.StageResult(
        "adult_train", "FAILURE", 3.0, "run-2", ["check adult/trained_model x failed (ERROR)"]
    )
    assert demo.format_result(failed, 13).splitlines() == [
        "  adult_train    FAILED          3.0 s   run run-2",
        "      check adult/trained_model x failed (ERROR)",
    ]


# A code location shaped like a pipeline's stage jobs, cheap to run; DEMO_FAIL_JOB makes one
# stage fail. Its `pipelines()` gives `secure-pipeline status` a pipeline of the same name.
LOCATION = """
import dataclasses
import os

import dagster as dg


def pipelines():
    from secure_pipeline.reference.adult import adult_pipeline

    return [dataclasses.replace(adult_pipeline(), name="demo")]


@dg.op
def stage_step(context):
    if context.job_name == os.environ.get("DEMO_FAIL_JOB"):
        raise RuntimeError("this stage fails on purpose\\nsecond line")


def _stage(name):
    @dg.job(name=name, executor_def=dg.in_process_executor)
    def stage():
        stage_step()

    return stage


defs = dg.Definitions(jobs=[_stage(f"demo_{s}") for s in ("ingest", "train", "release")])
"""

WORKSPACE = """
load_from:
  - python_file:
      relative_path: demo_location.py
      location_name: demo_location
      working_directory: .
"""


def _run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "demo_location.py").write_text(LOCATION)
    (tmp_path / "workspace.yaml").write_text(WORKSPACE)
    environment = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "SECURE_PIPELINE_CODE_LOCATION": "demo_location",
        **env,
    }
    return subprocess.run(
        [sys.executable, str(DEMO), "--pipeline", "demo", "--workspace", "workspace.yaml"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _runs(home: Path) -> list:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(reversed(instance.get_runs()))


def test_demo_launches_each_stage_as_a_run_of_its_job(tmp_path, isolated_env):
    (isolated_env / "store").mkdir()  # what `secure-pipeline status` reads (empty here)
    done = _run_demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for job in ("demo_ingest", "demo_train", "demo_release"):
        assert any(line.startswith(f"  {job}") and "succeeded" in line for line in lines)
    assert any(line.startswith("3 stages succeeded in") for line in lines)
    assert "pipeline demo" in lines  # `secure-pipeline status`
    assert any("demo/raw_adult" in line and "not materialized yet" in line for line in lines)
    assert "next:" in lines
    assert "models:/demo@champion" in done.stdout
    assert "DEBUG" not in done.stdout + done.stderr
    runs = _runs(isolated_env)
    assert [r.job_name for r in runs] == ["demo_ingest", "demo_train", "demo_release"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # Created from the code location, as the UI does: listed under its job there.
    assert all(r.remote_job_origin.location_name == "demo_location" for r in runs)
    with dg.DagsterInstance.from_config(str(isolated_env)) as instance:
        listed = instance.get_runs(
            dg.RunsFilter(tags={".dagster/repository": "__repository__@demo_location"})
        )
    assert len(listed) == 3
    log = (isolated_env / "demo.log").read_text()
    assert "RUN_SUCCESS" in log


def test_demo_stops_at_the_first_failed_stage(tmp_path, isolated_env):
    done = _run_demo(tmp_path, DEMO_FAIL_JOB="demo_train")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "demo_ingest" in out
    assert "  demo_train    FAILED" in out
    assert "      step stage_step: RuntimeError: this stage fails on purpose\n" in out
    assert "stopped at demo_train after" in out
    assert "not run: demo_release" in out
    assert "full log: " in out
    assert "DEBUG" not in out + done.stderr
    runs = _runs(isolated_env)
    assert [r.job_name for r in runs] == ["demo_ingest", "demo_train"]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]
    assert f"/runs/{runs[1].run_id}" in out
    assert "STEP_FAILURE" in (isolated_env / "demo.log").read_text()
