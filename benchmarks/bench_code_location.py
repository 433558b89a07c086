"""Code-location load time with 1 and with 10 pipelines, vs `import dagster`.

Goals: one pipeline <= 1.5x `import dagster`; growth at most linear in the number of pipelines
(each pipeline past the first costs no more than the first one added over `import dagster`).
Each variant is a fresh interpreter that builds the definitions and the repository Dagster
serves from them (``get_repository_def()``: every asset, check, job, schedule and sensor
resolved), which is what a code server, every run worker and every step process pays. Two ways
in: from Python (``build_definitions([...])``) and as this repository's code location does, from
a defs folder of ``defs.yaml`` component instances (Dagster's component tree, the YAML read with
source positions, every pipeline checked, then built). The pipelines are copies of the reference
under other names; variants run alternately.
"""

import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import interleaved, report

LOCATION = """
import dataclasses

from secure_pipeline.compose import build_definitions
from secure_pipeline.reference.adult import adult_pipeline

reference = adult_pipeline()
# Copies under other names; only the reference reads the source variable, so copies read none.
source = dataclasses.replace(reference.source, location_env_var=None)
pipelines = [dataclasses.replace(reference, name=f"p{{i}}", source=source) for i in range({n})]
repository = build_definitions(pipelines).get_repository_def()
assert len({{key.path[0] for key in repository.assets_defs_by_key}}) == {n}
"""


FOLDER = """
import importlib
import sys
from pathlib import Path

import dagster as dg

from secure_pipeline.component import build_folder_definitions

sys.path.insert(0, {parent!r})
tree = dg.ComponentTree.from_module(
    defs_module=importlib.import_module("bench_defs"), project_root=Path({parent!r})
)
repository = build_folder_definitions(tree).get_repository_def()
assert len({{key.path[0] for key in repository.assets_defs_by_key}}) == {n}
"""


def python(code: str):
    return lambda: subprocess.run([sys.executable, "-c", code], check=True)


def defs_folder(parent: Path, n: int) -> Path:
    """A package ``bench_defs`` with ``n`` copies of the reference's ``defs.yaml``."""
    reference = Path(__file__).resolve().parent.parent / "secure_pipeline/defs/adult/defs.yaml"
    text = reference.read_text(encoding="utf-8")
    root = parent / f"folder{n}"
    package = root / "bench_defs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    for i in range(n):
        (package / f"p{i}").mkdir()
        copy = re.sub(r"(?m)^  name: adult$", f"  name: p{i}", text, count=1)
        (package / f"p{i}" / "defs.yaml").write_text(copy, encoding="utf-8")
    return root


def scaling(times: dict[str, list[float]], base: str, one: str, ten: str) -> None:
    """Print the one-pipeline goal and whether each further pipeline costs at most the first."""
    base_s, one_s, ten_s = (statistics.median(times[name]) for name in (base, one, ten))
    ratio = one_s / base_s
    print(f"  goal <= 1.50x with one pipeline: {'meets' if ratio <= 1.5 else 'MISSES'} "
          f"({ratio:.2f}x)")  # fmt: skip
    first, increment = one_s - base_s, (ten_s - one_s) / 9
    print(
        f"  the first pipeline adds {first * 1000:.0f} ms to `import dagster`, each further one "
        f"{increment * 1000:.0f} ms ({increment / first:.2f}x the first)"
    )
    linear = "meets" if increment <= first else "MISSES"
    print(f"  goal: growth at most linear (each further pipeline <= the first): {linear}")


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        one, ten = defs_folder(Path(scratch), 1), defs_folder(Path(scratch), 10)
        variants = {
            "import dagster": python("import dagster"),
            "Python, 1 pipeline": python(LOCATION.format(n=1)),
            "Python, 10 pipelines": python(LOCATION.format(n=10)),
            "defs folder, 1 pipeline": python(FOLDER.format(parent=str(one), n=1)),
            "defs folder, 10 pipelines": python(FOLDER.format(parent=str(ten), n=10)),
        }
        times = interleaved(variants, repeats=7)
    title = "code-location load: build + resolve the repository (fresh interpreter each)"
    report(title, times, "import dagster", goal=None)
    print("from Python (build_definitions):")
    scaling(times, "import dagster", "Python, 1 pipeline", "Python, 10 pipelines")
    print("from a defs folder of components (what secure_pipeline.definitions loads):")
    scaling(times, "import dagster", "defs folder, 1 pipeline", "defs folder, 10 pipelines")


if __name__ == "__main__":
    main()
