"""``make demo``: the reference pipeline through its stage jobs, as real runs of the instance.

Each stage job (``adult_ingest``, then ``adult_train``, then ``adult_release``) is launched the
way the Dagster UI and daemon launch a run: the run is created from the code location loaded
from ``workspace.yaml`` (so the UI lists it under its job and in Overview, and can re-execute
it) and started by the instance's run launcher in a run worker, which uses the job's own
executor. The first stage that does not succeed stops the demo. The runs' logs go to a file
under ``$DAGSTER_HOME``; the terminal shows one line per stage, then ``secure-pipeline status``
and the commands to look further.

Not ``dagster job execute``: its runs carry no code-location origin, so the UI shows them on
the Runs page only, under no job. Not ``dagster job launch``: locally it only queues the run for
the daemon, which ``make ui`` starts.
"""

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

STAGES = ("ingest", "train", "release")
UI_URL = "http://127.0.0.1:3000"
LOG_NAME = "demo.log"
_POLL_SECONDS = 0.5
# How a run's final status reads; failures in capitals, to be seen in a scrolling terminal.
_OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "FAILED", "CANCELED": "CANCELED"}


@dataclass
class StageResult:
    """How one stage job's run ended.

    Attributes:
        job: The stage job.
        status: The run's final Dagster status (``SUCCESS``, ``FAILURE``, ``CANCELED``), or
            ``NOT_LAUNCHED`` when the run could not be started.
        seconds: Wall time from launching the run to its end.
        run_id: The run, when one was created.
        problems: What went wrong: failed steps and failed checks, one line each.
    """

    job: str
    status: str
    seconds: float
    run_id: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """Whether the run succeeded."""
        return self.status == "SUCCESS"


class DemoError(Exception):
    """The demo cannot start: the instance or the code location is not usable."""


def stage_jobs(pipeline: str) -> list[str]:
    """The stage jobs of a pipeline, in the order the demo runs them."""
    return [f"{pipeline}_{stage}" for stage in STAGES]


def display_path(path: Path | str, cwd: Path | None = None) -> str:
    """``path`` relative to ``cwd`` when it lies below it (shorter to read and to paste)."""
    path = Path(path).absolute()
    cwd = (cwd or Path.cwd()).absolute()
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def mlflow_command(tracking_uri: str, venv_bin: str, cwd: Path | None = None) -> str:
    """The command that shows the MLflow tracking store (a local SQLite file or a server)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        database = display_path(tracking_uri.removeprefix(prefix), cwd)
        return f"{venv_bin}/mlflow ui --backend-store-uri {prefix}{database}"
    return f"open {tracking_uri}"


def next_commands(
    pipeline: str, venv_bin: str, tracking_uri: str, home: str
) -> list[tuple[str, str]]:
    """What a user runs next, each with what it shows."""
    model = f"models:/{pipeline}@champion"
    return [
        ("make ui", f"the Dagster UI and daemon on {UI_URL}: these runs, the lineage, every check"),
        (
            f"export DAGSTER_HOME={Path(home).absolute()}",
            "the commands below read the pipeline's state from here (as `make` does)",
        ),
        (
            mlflow_command(tracking_uri, venv_bin),
            "the training run in MLflow: parameters, metrics, the checks' results and plots",
        ),
        (
            f"{venv_bin}/secure-pipeline verify {model}",
            "re-verify the champion from the registry's bytes",
        ),
        (
            f"{venv_bin}/secure-pipeline evidence {model}",
            "every signed attestation behind the champion",
        ),
    ]


def format_next(commands: Sequence[tuple[str, str]]) -> str:
    """The "next" block of the summary: each command below a comment, ready to paste."""
    lines = ["next:"]
    for command, what in commands:
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines)


def format_result(result: StageResult, width: int) -> str:
    """One stage's line (and its problems below it)."""
    outcome = _OUTCOMES.get(result.status, result.status.replace("_", " "))
    run = f"run {result.run_id}" if result.run_id else ""
    lines = [f"  {result.job:<{width}}  {outcome:<12} {result.seconds:6.1f} s   {run}".rstrip()]
    lines += [f"      {problem}" for problem in result.problems]
    return "\n".join(lines)


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[TextIO]:
    """Send this process's stdout and stderr, and its children's, to ``log``.

    Yields the terminal (the original stdout) for progress lines. The code server and run
    workers Dagster starts inherit the redirected descriptors, so their DEBUG event logs land in
    the file too.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    try:
        with log.open("wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)
        terminal.close()


def _root_error(error: Any) -> str:
    """``Class: first line`` of the innermost cause (the exception the asset or check raised)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    lines = (error.message or "").strip().splitlines()
    name = error.cls_name or "error"
    # Dagster's message starts with the qualified class name: keep the short one only.
    first = re.sub(rf"^[\w.]*\b{re.escape(name)}: ?", "", lines[0] if lines else "")
    return f"{name}: {first}"[:240]


def _problems(instance: Any, run_id: str) -> list[str]:
    """The failed steps and failed checks of a run, from its event log."""
    import dagster as dg

    failures = instance.all_logs(
        run_id,
        of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.ASSET_CHECK_EVALUATION},
    )
    problems = []
    for entry in failures:
        event = entry.dagster_event
        data = event.event_specific_data
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            if not data.passed:
                problems.append(
                    f"check {data.asset_key.to_user_string()} {data.check_name} failed "
                    f"({data.severity.value})"
                )
        elif data.error is not None:
            problems.append(f"step {event.step_key}: {_root_error(data.error)}")
        else:
            problems.append(f"step {event.step_key} failed")
    return problems


def run_stages(
    jobs: Sequence[str],
    workspace_file: Path,
    location: str | None,
    on_start: Callable[[str], None],
    on_end: Callable[[StageResult], None],
) -> tuple[list[StageResult], float]:
    """Launch each job's run in turn, waiting for it; stop after the first that fails.

    Returns:
        The results of the jobs that ran, and the seconds it took to load the code location.

    Raises:
        DemoError: When the code location does not load or lacks one of the jobs.
    """
    import dagster as dg

    # The pieces `dagster job launch` is made of: no public API creates a run from a loaded code
    # location and launches it without the queue. uv.lock pins the Dagster they come from.
    from dagster._cli.job import _create_run
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster.version import __version__

    results: list[StageResult] = []
    started = time.monotonic()
    target = WorkspaceFileTarget(paths=[str(workspace_file)])
    with (
        dg.DagsterInstance.get() as instance,
        WorkspaceProcessContext(instance, target, version=__version__) as process,
    ):
        workspace = process.create_request_context()
        names = workspace.code_location_names
        name = location or (names[0] if len(names) == 1 else None)
        if name not in names:
            raise DemoError(f"choose a code location of {workspace_file}: {', '.join(names)}")
        if workspace.has_code_location_error(name):
            error = workspace.get_code_location_error(name)
            raise DemoError(f"the code location {name!r} does not load: {_root_error(error)}")
        code_location = workspace.get_code_location(name)
        (repository,) = code_location.get_repositories().values()
        absent = [job for job in jobs if not repository.has_job(job)]
        if absent:
            raise DemoError(f"the code location {name!r} has no job {', '.join(absent)}")
        loaded = time.monotonic() - started
        for job in jobs:
            on_start(job)
            begun = time.monotonic()
            # Exactly what `dagster job launch` creates (origin, job tags, execution plan),
            # then launched directly instead of queued for a daemon.
            run = _create_run(
                instance=instance,
                code_location=code_location,
                remote_repo=repository,
                remote_job=repository.get_full_job(job),
                run_config={},
                tags={},
                op_selection=None,
                run_id=None,
            )
            try:
                instance.launch_run(run.run_id, workspace)
                while not (current := instance.get_run_by_id(run.run_id)).is_finished:
                    time.sleep(_POLL_SECONDS)
            except KeyboardInterrupt:
                # Do not leave a run worker behind the user's back.
                instance.run_launcher.terminate(run.run_id)
                raise
            except Exception as exc:  # noqa: BLE001 - reported as the stage's outcome
                result = StageResult(job, "NOT_LAUNCHED", time.monotonic() - begun, run.run_id)
                result.problems.append(f"{type(exc).__name__}: {exc}"[:240])
            else:
                result = StageResult(
                    job, current.status.value, time.monotonic() - begun, run.run_id
                )
                if not result.succeeded:
                    result.problems = _problems(instance, run.run_id)
            results.append(result)
            on_end(result)
            if not result.succeeded:
                break
    return results, loaded


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0].strip("`: "))
    parser.add_argument("--pipeline", default="adult", help="the pipeline whose jobs run")
    parser.add_argument("--workspace", type=Path, default=Path("workspace.yaml"))
    parser.add_argument("--location", help="the code location (default: the only one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage jobs, then print the status and what to look at next."""
    args = _arguments(argv)
    out = sys.stdout
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        out.write("DAGSTER_HOME is not set: run `make demo` (it uses .dagster_home)\n")
        return 2
    log = Path(home) / LOG_NAME
    jobs = stage_jobs(args.pipeline)
    width = max(len(job) for job in jobs)
    out.write(
        f"running pipeline {args.pipeline} through its stage jobs, one run each "
        f"(Dagster instance {display_path(home)}, run logs in {display_path(log)})\n"
    )
    started = time.monotonic()
    with output_to(log) as terminal:

        def on_start(job: str) -> None:
            # On a terminal the stage's line says it is running until its outcome replaces it.
            if terminal.isatty():
                terminal.write(f"  {job:<{width}}  running...\r")

        def on_end(result: StageResult) -> None:
            terminal.write(format_result(result, width) + "\n")

        try:
            results, loaded = run_stages(jobs, args.workspace, args.location, on_start, on_end)
        except DemoError as exc:
            terminal.write(f"cannot start: {exc}\n  full log: {display_path(log)}\n")
            return 2
        except KeyboardInterrupt:
            terminal.write("\ninterrupted: the running stage's run was cancelled\n")
            return 130
    total = time.monotonic() - started
    failed = next((r for r in results if not r.succeeded), None)
    if failed is not None:
        skipped = jobs[len(results) :]
        out.write(
            f"stopped at {failed.job} after {total:.1f} s"
            + (f"; not run: {', '.join(skipped)}" if skipped else "")
            + f"\n  full log: {display_path(log)}"
            + f"\n  the run in the UI: make ui, then {UI_URL}/runs/{failed.run_id}\n"
        )
        return 1
    out.write(
        f"{len(results)} stages succeeded in {total:.1f} s "
        f"(code location loaded in {loaded:.1f} s)\n\n"
    )
    out.flush()
    status = [sys.executable, "-m", "secure_pipeline.cli", "status", "--pipeline", args.pipeline]
    code = subprocess.run(status, check=False).returncode
    from secure_pipeline.training.tracking import tracking_uri

    venv_bin = display_path(Path(sys.executable).parent)
    commands = next_commands(args.pipeline, venv_bin, tracking_uri(), home)
    out.write("\n" + format_next(commands) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
