"""Code-location load time: `import secure_pipeline.definitions` vs `import dagster`.

Goal: <= 1.5x. Each variant is a fresh interpreter (what every run worker and step process
pays), run alternately. Also shown: building the definitions (what a code server does).
"""

import subprocess
import sys

from _common import interleaved, report


def python(code: str):
    return lambda: subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    times = interleaved(
        {
            "import dagster": python("import dagster"),
            "import secure_pipeline.definitions": python("import secure_pipeline.definitions"),
            "import + build defs (code server load)": python(
                "import secure_pipeline.definitions as d; d.defs()"
            ),
        },
        repeats=9,
    )
    report("code-location load (fresh interpreter each)", times, "import dagster", goal=1.5)


if __name__ == "__main__":
    main()
