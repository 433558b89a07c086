"""HTTPS ingestion of a 200 MB file into the snapshot store vs curl of the same URL.

Goal: <= 1.3x. One HTTPS server (TLS 1.3, test CA) runs in its own process; both clients
download the same URL from it, alternately. The store side is what `raw_<source>` does: TLS 1.3
with certificate checks, streaming with a size limit, SHA-256 in the same pass, a spooled
create-only write (fsync, read-only, link) and the manifest. curl writes to a file in the same
directory (the fair comparison) and, for reference, to /dev/null.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import interleaved, report

from secure_pipeline.ingestion.https import HttpsConnector
from secure_pipeline.storage.local import LocalSnapshotStore

SIZE = 200 * 1024 * 1024
SERVER = """
import sys
from pathlib import Path
from secure_pipeline_tests.tls_server import make_pki, serve
pki = make_pki(Path(sys.argv[1]) / "pki")
with serve(Path(sys.argv[1]) / "www", pki) as server:
    print(server.url, pki.ca, flush=True)
    sys.stdin.read()
"""


def main() -> None:
    if shutil.which("curl") is None:
        sys.exit("curl is needed for this benchmark (apt-get install curl)")
    work = Path(tempfile.mkdtemp(prefix="bench-https-", dir=Path.cwd()))
    (work / "www").mkdir()
    with (work / "www" / "big.bin").open("wb") as out:
        for _ in range(SIZE // (8 << 20)):
            out.write(os.urandom(8 << 20))
    repo = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(work)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
    )
    try:
        base, ca = server.stdout.readline().split()
        url = f"{base}/data/big.bin"
        counter = {"n": 0}

        def curl(target: str):
            def run() -> None:
                subprocess.run(
                    ["curl", "-sS", "--fail", "--tlsv1.3", "--cacert", ca, "-o", target, url],
                    check=True,
                )
                if target != "/dev/null":
                    os.unlink(target)

            return run

        def store() -> None:
            counter["n"] += 1
            root = work / f"store-{counter['n']}"
            snapshots = LocalSnapshotStore(root)
            with HttpsConnector(ca_bundle=Path(ca)).open(url, max_bytes=SIZE + 1) as fetched:
                ref = snapshots.put_stream("raw", fetched.chunks, ext="bin", format="bytes",
                                           max_bytes=SIZE + 1)  # fmt: skip
            assert ref.size == SIZE
            shutil.rmtree(root, ignore_errors=True)

        times = interleaved(
            {
                "curl -o file": curl(str(work / "curl.bin")),
                "curl -o /dev/null": curl("/dev/null"),
                "HTTPS connector into the snapshot store": store,
            },
            repeats=5,
        )
        report("HTTPS ingestion of 200 MB", times, "curl -o file", goal=1.3)
        vs_null = (
            sorted(times["HTTPS connector into the snapshot store"])[2]
            / sorted(times["curl -o /dev/null"])[2]
        )
        print(f"  vs curl -o /dev/null: {vs_null:.2f}x")
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
