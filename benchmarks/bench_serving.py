"""The model server vs MLflow's, and the ONNX path's cost vs onnxruntime called directly.

Goals: the slot's throughput >= 5x that of ``mlflow models serve`` of the same model version, for
single-row and 100-row requests; the slot's per-request cost on the ONNX path <= 2x
``InferenceSession.run`` called directly on the same input.

The model is the reference pipeline's, trained, signed, registered and promoted once in a
temporary home (a subprocess, ~40 s), with its verified ONNX copy.

1. Over HTTP, one load generator in this process for both servers: N threads, each with one
   persistent keep-alive connection, sending requests back to back (closed loop) for
   ``SECONDS``, the two servers alternating window by window (ABBA) ``REPEATS`` times, at 1
   and 4 connections, with 1 and 100 rows per request.

   * the slot: ``secure-pipeline serve`` as the blue-green deployment starts it (one uvicorn
     process; mutual TLS 1.3, the model verified before load, input validation, metrics, live
     recording of every row), ``POST /predict`` with raw rows;
   * MLflow: ``mlflow models serve -m models:/adult/<version> --env-manager local --workers 1``
     (one uvicorn process, plain HTTP, no TLS; it loads a skops model only with
     ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``, trusting the type list the artifact itself
     names, set for this baseline alone), ``POST /invocations`` with the same rows
     already encoded as the model's inputs (``dataframe_records``: it has no feature encoding of
     its own), answering labels.

   Every answer must be 200 (anything else makes the figures invalid). Throughput is the median
   over the windows; the ratio is slot / MLflow within the invocation. The client shares the two
   cores with the server under test.

2. In this process, per request (the variants taking turns in blocks, each block's ratio against
   its own ``session.run``): the slot's request path without the socket (the body's JSON parse
   with the slot's own refusals, ``ModelService.predict`` and the JSON answer as Starlette
   renders it) on the ONNX path and on the skops path (the same service with its ONNX predictor
   set aside), against ``session.run`` on the already-encoded feeds of the same rows and
   ``predict_proba`` on the already-built frame; two parts of the request path alone (the
   JSON parse and render of the request body, the rows' validation and encoding); and the
   floor of any JSON endpoint around the same graph (a body of rows already encoded as its
   inputs parsed, fed, scored and the scores written back, with no refusal, metric or record).

Runs ~3 minutes on 2 cores: ``python benchmarks/bench_serving.py``.
"""

import gc
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import (  # noqa: E402 - a sibling script
    ROW,
    children,
    free_port,
    isolated_work,
    process_cpu,
    reference_model,
)

THROUGHPUT_GOAL = 5.0
COST_GOAL = 2.0
CONNECTIONS = (1, 4)
ROWS = (1, 100)
SECONDS = 2.0
REPEATS = 4
CALL_REPEATS = 800
BLOCKS = 16
HEADERS = {"Content-Type": "application/json"}


@dataclass
class Target:
    """One server under load: how to connect, where to post and what."""

    connect: Callable[[], http.client.HTTPConnection]
    path: str
    bodies: dict[int, bytes]
    pids: list[int]


@dataclass
class Window:
    """One target's requests in one load window."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    cpu: float = 0.0

    @property
    def throughput(self) -> float:
        """Answered (200) requests per second."""
        return len(self.latencies) / self.seconds


def load(target: Target, rows: int, connections: int, seconds: float) -> Window:
    """Send ``rows``-row requests to ``target`` for ``seconds`` from ``connections`` threads."""
    body = target.bodies[rows]
    ready = threading.Barrier(connections + 1)
    start: list[float] = []
    results: list[tuple[Window, float]] = []
    lock = threading.Lock()

    def send(connection: http.client.HTTPConnection) -> int:
        connection.request("POST", target.path, body, HEADERS)
        response = connection.getresponse()
        response.read()
        return response.status

    def worker() -> None:
        window = Window(seconds)
        connection = target.connect()
        try:
            if (status := send(connection)) != 200:  # connect (and handshake) first
                window.failures[f"warm-up {status}"] += 1
        except (OSError, http.client.HTTPException) as exc:
            window.failures[f"warm-up {type(exc).__name__}"] += 1
        ready.wait()
        end, clock, last = start[0] + seconds, time.perf_counter, 0.0
        while clock() < end:
            sent = clock()
            try:
                status = send(connection)
                last = clock()
                if status == 200:
                    window.latencies.append(last - sent)
                else:
                    window.failures[str(status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                last = clock()
                window.failures[type(exc).__name__] += 1
                connection.close()
                connection = target.connect()
        connection.close()
        with lock:
            results.append((window, last))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    gc.collect()
    gc.disable()  # a collection in the client is not the server's cost
    try:
        before = process_cpu(target.pids)
        start.append(time.perf_counter())
        ready.wait()
        for thread in threads:
            thread.join()
        cpu = process_cpu(target.pids) - before
    finally:
        gc.enable()
    merged = Window(max(last for _, last in results) - start[0], cpu=cpu)
    for window, _ in results:
        merged.latencies += window.latencies
        merged.failures += window.failures
    return merged


def start_mlflow(version: str) -> tuple[subprocess.Popen, int]:
    """``mlflow models serve`` of the registered version; waits until it answers /ping."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve",
               "-m", f"models:/adult/{version}", "--env-manager", "local", "--workers", "1",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    # MLflow runs `uvicorn` by name: this environment's scripts go first on its PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # MLflow loads no skops model without this (it would trust the type list the artifact
        # itself carries): a baseline only, the reason the slot verifies and loads on its own.
        env={**os.environ, "PATH": path, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited:\n{process.stderr.read()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                connection.close()
                return process, port
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow models serve did not answer /ping within 120 s")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started in its own session, and its workers."""
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, 9)


def median_call(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of one call of ``fn`` over ``repeats`` calls."""
    samples = []
    clock = time.perf_counter
    for _ in range(repeats):
        started = clock()
        fn()
        samples.append(clock() - started)
    return statistics.median(samples)


def per_request_costs(service: Any) -> dict[int, dict[str, tuple[float, float]]]:
    """Rows -> variant -> (median seconds, median ratio to ``session.run`` in its block).

    The variants take turns in ``BLOCKS`` blocks of ``CALL_REPEATS / BLOCKS`` calls each, so a
    slower moment of the machine hits all of them; each block's ratio is against the
    ``session.run`` median of the same block.
    """
    import numpy as np
    from starlette.responses import JSONResponse

    from secure_pipeline.serving import server
    from secure_pipeline.serving.onnx_runtime import PROBABILITIES

    costs: dict[int, dict[str, tuple[float, float]]] = {}
    predictor = service.predictor
    for rows in ROWS:
        body = json.dumps({"rows": [ROW] * rows}).encode()

        def request(body: bytes = body) -> bytes:
            document = json.loads(
                body, parse_constant=server._refuse_constant, parse_float=server._finite_float
            )
            return JSONResponse(service.predict(document)).body

        def skops_request(body: bytes = body) -> bytes:
            service.predictor = None
            try:
                return request(body)
            finally:
                service.predictor = predictor

        feeds = predictor.feeds(encode(service, rows, as_arrays=True))
        session = predictor.session
        # The floor of any JSON endpoint: rows already encoded as the graph's inputs, parsed,
        # put in the feeds, scored and the scores written back; no refusal, metric or record.
        encoded_body = json.dumps({"rows": encoded_rows(service, rows)}).encode()

        def bare(
            body: bytes = encoded_body, dtypes: dict = predictor.dtypes, session: Any = session
        ) -> bytes:
            given = json.loads(body)["rows"]
            inputs = {name: np.array([row[name] for row in given], dtype=dtype).reshape(-1, 1)
                      for name, dtype in dtypes.items()}  # fmt: skip
            (probabilities,) = session.run([PROBABILITIES], inputs)
            return json.dumps({"scores": probabilities[:, 1].tolist()}).encode()

        frame = encode(service, rows)
        model = service.model
        variants: dict[str, Callable[[], object]] = {
            "onnxruntime session.run": lambda s=session, f=feeds: s.run(None, f),
            "  of it: JSON parse + render of the body": lambda b=body: (
                JSONResponse(
                    json.loads(
                        b, parse_constant=server._refuse_constant, parse_float=server._finite_float
                    )
                ).body
            ),
            "  of it: validate + encode rows": lambda r=rows: encode(service, r, as_arrays=True),
            "slot request, ONNX path": request,
            "bare JSON endpoint, same graph": bare,
            "sklearn predict_proba": lambda m=model, f=frame: m.predict_proba(f),
            "slot request, skops path": skops_request,
        }
        for fn in variants.values():  # warm-up
            median_call(fn, 20)
        times: dict[str, list[float]] = {name: [] for name in variants}
        ratios: dict[str, list[float]] = {name: [] for name in variants}
        gc.collect()
        for _ in range(BLOCKS):
            block = {name: median_call(fn, CALL_REPEATS // BLOCKS) for name, fn in variants.items()}
            for name, seconds in block.items():
                times[name].append(seconds)
                ratios[name].append(seconds / block["onnxruntime session.run"])
        costs[rows] = {
            name: (statistics.median(times[name]), statistics.median(ratios[name]))
            for name in variants
        }
    return costs


def encode(service: Any, rows: int, *, as_arrays: bool = False) -> Any:
    """``rows`` copies of the request row, validated and encoded as the slot does."""
    from secure_pipeline.serving import server

    return server.rows_to_frame(
        [ROW] * rows, service.fields, service.pipeline, service.inputs, service.limits,
        service._optional, as_arrays=as_arrays, features=service._features,
    )  # fmt: skip


def encoded_rows(service: Any, rows: int) -> list[dict[str, Any]]:
    """The model-input encoding of ``rows`` copies of the request row (what MLflow takes)."""
    return json.loads(encode(service, rows).to_json(orient="records"))


def main() -> None:
    from secure_pipeline import environment as env
    from secure_pipeline.promotion.bluegreen import (
        DeploymentState,
        controller_context,
        down,
        slot_pki,
        up,
    )
    from secure_pipeline.reference.adult import adult_pipeline
    from secure_pipeline.serving.certs import init_dev_pki
    from secure_pipeline.serving.server import ModelService

    work, home, directory = isolated_work("bench-serving-")
    mlflow_server = None
    try:
        started = time.perf_counter()
        version = reference_model(home)
        print(f"reference model adult/{version} trained, registered and promoted "
              f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
        env.configure_mlflow()  # the home's registry, for MLflow's server too

        # In this process: the same verified model, for the per-request costs and the encoding.
        service = ModelService(adult_pipeline(), f"models:/adult/{version}", "blue")
        service.load()
        if service.state != "ready" or service.runtime != "onnx":
            raise RuntimeError(f"the slot did not load its ONNX copy: {service.reason}")
        costs = per_request_costs(service)
        bodies_mlflow = {
            rows: json.dumps({"dataframe_records": encoded_rows(service, rows)}).encode()
            for rows in ROWS
        }
        service.close()

        pki = init_dev_pki(work / "pki")
        up(
            directory, adult_pipeline(), model_ref=f"models:/adult/{version}",
            listen=f"127.0.0.1:{free_port()}",
            slot_ports={"blue": free_port(), "green": free_port()},
            server_cert=pki.server_cert, server_key=pki.server_key, client_ca=pki.ca_cert,
            identities={"ops": ("admin",)},
        )  # fmt: skip
        state = DeploymentState.load(directory)
        slot_host, _, slot_port = state.slots["blue"].address.rpartition(":")
        slot_context = controller_context(slot_pki(directory))  # TLS 1.3, the slot CA
        mlflow_server, mlflow_port = start_mlflow(version)
        targets = {
            "slot (ONNX)": Target(
                lambda: http.client.HTTPSConnection(
                    slot_host, int(slot_port), context=slot_context, timeout=30
                ),
                "/predict",
                {rows: json.dumps({"rows": [ROW] * rows}).encode() for rows in ROWS},
                [state.slots["blue"].pid],
            ),
            "mlflow models serve": Target(
                lambda: http.client.HTTPConnection("127.0.0.1", mlflow_port, timeout=30),
                "/invocations",
                bodies_mlflow,
                [mlflow_server.pid, *children(mlflow_server.pid)],
            ),
        }
        print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; "
              f"{SECONDS:g} s windows, ABBA x {REPEATS}")  # fmt: skip
        failures: Counter = Counter()
        verdicts: list[tuple[str, float]] = []
        print("\n1. throughput over HTTP (requests/s, median of windows; server CPU as a share "
              "of one core)")  # fmt: skip
        for rows in ROWS:
            for connections in CONNECTIONS:
                for target in targets.values():
                    load(target, rows, connections, 0.5)  # warm-up
                windows: dict[str, list[Window]] = {name: [] for name in targets}
                for repeat in range(REPEATS):
                    for name in list(targets)[:: 1 if repeat % 2 == 0 else -1]:
                        windows[name].append(load(targets[name], rows, connections, SECONDS))
                medians = {}
                for name, runs in windows.items():
                    failures += sum((w.failures for w in runs), Counter())
                    medians[name] = statistics.median(w.throughput for w in runs)
                    latencies = sorted(x for w in runs for x in w.latencies)
                    p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
                    cpu = sum(w.cpu for w in runs) / sum(w.seconds for w in runs)
                    print(f"  {rows:>3} row(s), {connections} conn, {name:<22} "
                          f"{medians[name]:8.0f} req/s ({medians[name] * rows:9.0f} rows/s)  "
                          f"p50 {p50:6.2f} ms  CPU {cpu:4.0%}")  # fmt: skip
                ratio = medians["slot (ONNX)"] / medians["mlflow models serve"]
                print(f"  {'':>3}  -> slot / mlflow {ratio:.2f}x")
                verdicts.append((f"{rows} row(s), {connections} connection(s)", ratio))

        print(f"\n2. per request in this process ({CALL_REPEATS} calls each in {BLOCKS} "
              "interleaved blocks; median time, median of the blocks' ratios)")  # fmt: skip
        cost_verdicts = []
        for rows, figures in costs.items():
            for name, (seconds, ratio) in figures.items():
                print(f"  {rows:>3} row(s)  {name:<28} {seconds * 1e6:9.1f} us   "
                      f"{ratio:6.2f}x session.run")  # fmt: skip
            cost_verdicts.append((rows, figures["slot request, ONNX path"][1]))

        print("\nverdicts")
        for what, ratio in verdicts:
            print(f"  throughput {what}: slot {ratio:.2f}x mlflow (goal >= {THROUGHPUT_GOAL:g}x: "
                  f"{'meets' if ratio >= THROUGHPUT_GOAL else 'MISSES'})")  # fmt: skip
        for rows, ratio in cost_verdicts:
            print(f"  ONNX path {rows} row(s): {ratio:.2f}x session.run (goal <= "
                  f"{COST_GOAL:g}x: {'meets' if ratio <= COST_GOAL else 'MISSES'})")  # fmt: skip
        if sum(failures.values()):
            print(f"INVALID: some requests were not answered 200: {dict(failures)}")
    finally:
        if mlflow_server is not None:
            stop(mlflow_server)
        if (directory / "deployment.json").is_file():
            down(directory)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
