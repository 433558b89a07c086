"""Sign + verify of a 1 GB model bundle vs `sha256sum` of the same bytes.

Goal: >= 1.0x, i.e. signing and then verifying (two full hashing passes, one per side) is no
slower than one `sha256sum` pass. model_signing hashes each file with SHA-256 (OpenSSL, with
the CPU's SHA extensions where present) and the files of a bundle in parallel.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import interleaved, report

from secure_pipeline.registry.signing import Signer, sign_bundle, verify_bundle
from secure_pipeline.trust.keys import generate_key
from secure_pipeline.trust.policy import parse_document, policy_document

SIZE = 1 << 30


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sign-", dir=Path.cwd()))
    try:
        bundle = work / "bundle"
        bundle.mkdir()
        with (bundle / "model.skops").open("wb") as out:
            for _ in range(SIZE // (16 << 20)):
                out.write(os.urandom(16 << 20))
        (bundle / "lineage.json").write_text('{"model": "benchmark"}')
        (bundle / "MODEL_CARD.md").write_text("# benchmark")
        public = generate_key(work / "key.pem")
        signer = Signer("key", private_key=work / "key.pem")
        trust = parse_document(policy_document({"release": [public.read_bytes()]}))

        def sha256sum() -> None:
            subprocess.run(["sha256sum", str(bundle / "model.skops")], check=True,
                           capture_output=True)  # fmt: skip

        def sign_and_verify() -> None:
            (bundle / "model.sig").unlink(missing_ok=True)
            sign_bundle(bundle, signer)
            verify_bundle(bundle, trust)

        def hashlib_pass() -> None:
            # for reference: one in-process SHA-256 pass (OpenSSL), which coreutils may not match
            import hashlib

            with (bundle / "model.skops").open("rb") as handle:
                hashlib.file_digest(handle, "sha256")

        times = interleaved(
            {
                "sha256sum": sha256sum,
                "one hashlib SHA-256 pass": hashlib_pass,
                "sign + verify": sign_and_verify,
            },
            3,
        )
        slowdown = report("1 GB bundle", times, "sha256sum", goal=None)
        print(f"  speed vs one sha256sum pass: {1 / slowdown:.2f}x (goal >= 1.0x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
