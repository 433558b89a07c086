"""Pipelines declared in YAML: the component, its error reports, its scaffold, the defs folder."""

import copy
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import typing
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from secure_pipeline import SecurePipelineComponent
from secure_pipeline.component import (
    attributes_model,
    build_folder_definitions,
    folder_pipelines,
    pipeline_from_attributes,
)
from secure_pipeline.component.scaffold import scaffolded_yaml
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.pipeline import SecurePipeline
from secure_pipeline.reference.adult import DATA_DIR, adult_pipeline
from secure_pipeline_tests.test_environment import PRODUCTION

TYPE = "secure_pipeline.SecurePipelineComponent"
REPO = Path(__file__).resolve().parents[1]
REFERENCE_YAML = REPO / "secure_pipeline" / "defs" / "adult" / "defs.yaml"
DG = Path(sys.executable).with_name("dg")


def _document(name: str) -> dict[str, Any]:
    """The scaffolded pipeline, as a YAML document to vary."""
    return yaml.safe_load(scaffolded_yaml(TYPE, name))


def _project(root: Path, files: dict[str, str]) -> tuple[Path, str]:
    """A minimal dg project with the given ``defs/<folder>/defs.yaml`` files.

    Returns:
        The project root and its package name (unique: Python caches imported modules).
    """
    package = f"team_{uuid.uuid4().hex[:8]}"
    (root / package / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "{package}"\nversion = "0.0.0"\n\n[tool.dg]\n'
        f'directory_type = "project"\n\n[tool.dg.project]\nroot_module = "{package}"\n'
    )
    (root / package / "__init__.py").write_text("")
    (root / package / "defs" / "__init__.py").write_text("")
    (root / package / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\n"
        "def defs() -> dg.Definitions:\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    for folder, text in files.items():
        (root / package / "defs" / folder).mkdir(parents=True)
        (root / package / "defs" / folder / "defs.yaml").write_text(text)
    return root, package


def _tree(root: Path, package: str, monkeypatch: pytest.MonkeyPatch) -> dg.ComponentTree:
    monkeypatch.syspath_prepend(str(root))
    return dg.ComponentTree.from_module(
        defs_module=importlib.import_module(f"{package}.defs"), project_root=root
    )


def _refusal(files: dict[str, str], tmp_path: Path, monkeypatch) -> str:
    """The message of the error loading a defs folder raises (through Dagster's tree)."""
    tree = _tree(*_project(tmp_path, files), monkeypatch)
    with pytest.raises(ConfigurationError) as raised:
        folder_pipelines(tree)
    return str(raised.value)


def _dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False)


BROKEN = """\
type: secure_pipeline.SecurePipelineComponent
attributes:
  name: loans
  sensitive_feature: [region]
  source:
    name: loans
    location: "{{ env.LOANS_URI }}"
    files: [{member: main, path: ../loans.csv}]
  schema:
    name: loans
    label: approved
    positive_label: "yes"
    has_header: maybe
    columns:
      - {name: amount, dtype: float, minimum: 0}
      - {name: region, dtype: category, allowed: [north, south]}
      - {name: term, dtype: decimal}
      - {name: approved, dtype: category, allowed: ["yes", "no"]}
  policy: {max_reject_rate: 0.005, min_roc_auc: 2}
  model: {exclude_features: [region], train_member: main, test_member: null,
          holdout_fraction: 1.5}
  orchestration:
    ingest: {namespace: Bad_Namespace}
"""


def test_every_problem_is_listed_with_its_yaml_path(tmp_path, monkeypatch) -> None:
    message = _refusal({"loans": BROKEN}, tmp_path, monkeypatch)
    expected = [
        "attributes.sensitive_feature: unknown key; did you mean 'sensitive_features'?",
        "attributes.source.location: templates are refused in locations and secrets",
        "attributes.source.files[0].path: source file path '../loans.csv' must be relative",
        "attributes.schema.has_header: must be true or false, found 'maybe' (line 13)",
        "attributes.schema.columns[2].dtype: must be one of 'int', 'float', 'string', "
        "'category', 'bool', 'date' or 'datetime', found 'decimal' (line 17)",
        "attributes.policy.min_roc_auc: must be in [0.5, 1], found 2 (line 19)",
        "attributes.model.holdout_fraction: model holdout_fraction must be between 0 and 1",
        "attributes.orchestration.ingest.namespace: ingest namespace 'Bad_Namespace' is not a "
        "valid Kubernetes name (line 23)",
    ]
    for line in expected:
        assert line in message, message
    assert message.startswith(f"{tmp_path}")  # the file is named
    assert "(8 problems;" in message
    # listed in file order, and what could not be read says what is checked later
    positions = [message.index(line) for line in expected]
    assert positions == sorted(positions)
    assert "The values of attributes.schema (and what refers to them) are checked" in message


def test_values_are_checked_across_sections_once_readable(tmp_path, monkeypatch) -> None:
    document = _document("loans")
    attributes = document["attributes"]
    attributes["sensitive_features"] = ["region", "gender"]
    attributes["schema"]["positive_label"] = "maybe"
    attributes["schema"]["columns"][1]["aliases"] = {"N": "nord"}
    attributes["features"] = {"bands": {"amount": [10, 5]}, "log1p": ["ghost"]}
    attributes["model"].update(exclude_features=["region", "amount_band", "typo"])
    attributes["model"]["train_member"] = "mian"
    attributes["policy"]["fairness_report_only"] = ["race"]
    attributes["canary"] = {"canary_weight": 90}
    attributes["source"]["chunk_bytes"] = 0
    message = _refusal({"loans": _dump(document)}, tmp_path, monkeypatch)
    for line in (
        "attributes.schema.positive_label: 'maybe' is not an allowed value of the label column",
        "attributes.schema.columns[1].aliases.N: column 'region': alias 'N' maps to 'nord'",
        "attributes.sensitive_features[1]: sensitive feature 'gender' is not a column",
        "attributes.features.bands.amount: band cut points of 'amount' must be strictly",
        "attributes.features.log1p[0]: feature setting names 'ghost', which is not a column",
        "attributes.policy.fairness_report_only[0]: fairness_report_only names 'race', not a "
        "sensitive feature",
        "attributes.model.exclude_features[2]: model exclude_features names 'typo', which is "
        "not a feature",
        "attributes.model.train_member: model train_member 'mian' is not a source file member",
        "attributes.canary.canary_weight: must be 1..50 percent, found 90",
        "attributes.source.chunk_bytes: source chunk_bytes must be positive",
    ):
        assert line in message, message
    assert "(10 problems;" in message
    assert "are checked once" not in message  # everything was read


def test_locations_and_secrets_come_from_variables_only() -> None:
    document = _document("loans")["attributes"]
    document["source"]["location"] = "https://reader:s3cret@data.example.com/loans/"
    document["orchestration"] = {
        "landing_env_var": "{{ env.LANDING }}",
        "registry": {"env_secrets": ["{% raw %}x{% endraw %}"]},
    }
    document["code_version"] = "{{ env.GIT_SHA }}"
    with pytest.raises(ConfigurationError) as refused:
        pipeline_from_attributes(document, prefix=("attributes",))
    message = str(refused.value)
    assert "attributes.source.location: credentials must not be written into a location" in (
        message
    )
    assert "attributes.orchestration.landing_env_var: templates are refused in locations" in (
        message
    )
    assert "attributes.orchestration.registry.env_secrets[0]: templates are refused" in message
    assert "attributes.code_version: templates are not rendered in a pipeline spec" in message
    # refused as a template, not also as an invalid variable name
    assert "is not a valid name" not in message
    assert "s3cret" not in message


def test_the_reference_yaml_is_the_python_reference() -> None:
    from secure_pipeline import definitions

    (pipeline,) = definitions.pipelines()
    reference = adult_pipeline()
    assert type(pipeline) is SecurePipeline
    assert pipeline == reference
    # what is hashed into provenance, verdicts and manifests is the same too
    assert pipeline.schema.version == reference.schema.version
    assert pipeline.policy.fingerprint() == reference.policy.fingerprint()
    assert pipeline.source.location == DATA_DIR.as_uri() + "/"
    assert list(pipeline.source_variables()) == ["SECURE_PIPELINE_SOURCE_URI"]
    assert "package:secure_pipeline.reference/data/" in REFERENCE_YAML.read_text()


def test_the_readme_yaml_is_the_readme_python() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("```python\nimport dagster as dg\nfrom secure_pipeline import")
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    begin = readme.index("```yaml\n", readme.index("### Or in YAML")) + len("```yaml\n")
    document = yaml.safe_load(readme[begin : readme.index("```", begin)])
    assert document["type"] == TYPE
    assert pipeline_from_attributes(document["attributes"]) == namespace["loans"]


def test_listing_the_pipelines_builds_no_definitions() -> None:
    code = (
        "import json, sys, secure_pipeline.definitions as d, secure_pipeline.compose as c; "
        "names = [p.name for p in d.pipelines()]; "
        "print(json.dumps([names, dict(c.pipelines_of()) == {}, "
        "'secure_pipeline.ingestion.assets' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [["adult"], True, False]


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("package:no_such_package_xyz/data/", "package 'no_such_package_xyz' cannot be imported"),
        ("package:secure_pipeline.reference/nothing/", "the package has no folder"),
        ("package:secure_pipeline.reference/../data/", "the folder must stay inside the package"),
        ("package:/data/", "write package:<dotted.package>/<folder>/"),
    ],
)
def test_a_package_location_must_name_an_installed_folder(location, expected) -> None:
    document = _document("loans")["attributes"]
    document["source"]["location"] = location
    with pytest.raises(ConfigurationError, match="attributes.source.location: ") as refused:
        pipeline_from_attributes(document, prefix=("attributes",))
    assert expected in str(refused.value)


def _pipelines_with_the_reference() -> dict[str, str]:
    census = _document("census")
    census["attributes"]["source"]["files"] = [
        {"member": "main", "path": "census.csv"},
        {"member": "holdout", "path": "holdout.csv"},
    ]
    census["attributes"]["model"]["test_member"] = "holdout"
    return {
        "adult": REFERENCE_YAML.read_text(),
        "loans": scaffolded_yaml(TYPE, "loans"),
        "teams/census": _dump(census),
    }


def test_the_command_line_names_the_problems_in_one_message(tmp_path, isolated_env) -> None:
    (isolated_env / "store").mkdir()
    root, package = _project(tmp_path / "team", {"loans": BROKEN})
    (root / "team_location.py").write_text(
        "import importlib\nfrom pathlib import Path\n\nimport dagster as dg\n\n"
        "from secure_pipeline.component import folder_pipelines\n\n\n"
        "def pipelines():\n"
        f"    defs = importlib.import_module('{package}.defs')\n"
        "    tree = dg.ComponentTree.from_module(defs_module=defs, project_root=Path('.'))\n"
        "    return folder_pipelines(tree)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root), "SECURE_PIPELINE_CODE_LOCATION": "team_location"}
    cli = Path(sys.executable).with_name("secure-pipeline")
    result = subprocess.run([str(cli), "status"], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert "attributes.policy.min_roc_auc: must be in [0.5, 1], found 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_yaml_pipelines_and_the_reference_in_one_location(tmp_path, monkeypatch) -> None:
    tree = _tree(*_project(tmp_path, _pipelines_with_the_reference()), monkeypatch)
    assert sorted(p.name for p in folder_pipelines(tree)) == ["adult", "census", "loans"]
    defs = build_folder_definitions(tree)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    for name in ("adult", "census", "loans"):
        assert {f"{name}/raw_{name}", f"{name}/features", f"{name}/promoted_model",
                f"{name}/live_traffic"} <= keys  # fmt: skip
        for stage in ("ingest", "train", "release", "monitor"):
            assert defs.resolve_job_def(f"{name}_{stage}").name == f"{name}_{stage}"
    assert len(keys) == 21
    assert set(defs.resources) == {"snapshot_store", "io_manager"}


def test_pipelines_on_kubernetes_share_the_adhoc_executor(tmp_path, monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOANS_SOURCE_URI", "s3://landing/loans/")
    monkeypatch.setenv("CENSUS_SOURCE_URI", "s3://landing/census/")
    tree = _tree(*_project(tmp_path, _pipelines_with_the_reference()), monkeypatch)
    defs = build_folder_definitions(tree)  # Dagster merges only identical executors
    assert defs.executor.name == "secure_pipeline_adhoc_k8s"
    assert defs.resolve_job_def("census_train").executor_def.name == "census_train_k8s"


def test_every_missing_source_variable_is_named_at_once(tmp_path, monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    tree = _tree(*_project(tmp_path, _pipelines_with_the_reference()), monkeypatch)
    with pytest.raises(ConfigurationError) as refused:
        build_folder_definitions(tree)
    assert "LOANS_SOURCE_URI" in str(refused.value)
    assert "CENSUS_SOURCE_URI" in str(refused.value)


def test_pipelines_sending_adhoc_runs_elsewhere_are_refused(tmp_path, monkeypatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOANS_SOURCE_URI", "s3://landing/loans/")
    loans = _document("loans")
    loans["attributes"]["orchestration"] = {"control_namespace": "team-dagster"}
    files = {"adult": REFERENCE_YAML.read_text(), "loans": _dump(loans)}
    tree = _tree(*_project(tmp_path, files), monkeypatch)
    with pytest.raises(ConfigurationError, match="send ad-hoc runs to the same place"):
        build_folder_definitions(tree)


def test_a_pipeline_name_is_declared_once(tmp_path, monkeypatch) -> None:
    files = {"loans": scaffolded_yaml(TYPE, "loans"), "copy": scaffolded_yaml(TYPE, "loans")}
    tree = _tree(*_project(tmp_path, files), monkeypatch)
    with pytest.raises(ConfigurationError, match="'loans' is declared in .*copy and .*loans"):
        folder_pipelines(tree)


def test_python_users_wrap_their_spec() -> None:
    reference = adult_pipeline()
    component = SecurePipelineComponent(reference)
    defs = dg.build_defs_for_component(component)
    assert defs.resolve_job_def("adult_train").name == "adult_train"
    with pytest.raises(TypeError, match="a SecurePipeline spec is required"):
        SecurePipelineComponent(dataclasses.asdict(reference))  # type: ignore[arg-type]


def test_the_yaml_schema_is_the_spec() -> None:
    """Every field of every spec dataclass is a documented, strictly typed YAML key."""
    schema = SecurePipelineComponent.get_model_cls().model_json_schema()
    assert schema == attributes_model().model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(SecurePipeline)}
    assert schema["required"] == ["name", "source", "schema"]
    column = schema["$defs"]["ColumnYaml"]
    assert column["properties"]["dtype"]["enum"] == [
        "int",
        "float",
        "string",
        "category",
        "bool",
        "date",
        "datetime",
    ]
    assert column["properties"]["aliases"]["type"] == "object"
    assert "Raw spellings" in column["properties"]["aliases"]["description"]
    for definition in schema["$defs"].values():
        assert definition["additionalProperties"] is False
        for name, field in definition["properties"].items():
            assert field.get("description"), f"{definition['title']}.{name} is undocumented"


def test_every_spec_field_has_a_yaml_form() -> None:
    """A field type added to the spec gets a deliberate YAML form (strict, documented)."""
    from secure_pipeline.component.reading import _STAND_INS
    from secure_pipeline.component.schema import _yaml_type

    seen: set[type] = set()
    pending: list[type] = [SecurePipeline]
    while pending:
        spec_class = pending.pop()
        seen.add(spec_class)
        for name, hint in typing.get_type_hints(spec_class).items():
            if name not in {f.name for f in dataclasses.fields(spec_class)}:
                continue
            kept = hint is Any or typing.get_origin(hint) is typing.Literal
            assert kept or _yaml_type(hint) is not hint, f"{spec_class.__name__}.{name}: {hint}"
            for inner in (hint, *typing.get_args(hint), *_nested_args(hint)):
                if dataclasses.is_dataclass(inner) and inner not in seen:
                    pending.append(inner)
    assert len(seen) >= 10
    SecurePipeline(**_STAND_INS)  # the stand-ins are valid by themselves


def _nested_args(hint: Any) -> list[Any]:
    return [a for arg in typing.get_args(hint) for a in (arg, *_nested_args(arg))]


def test_yaml_numbers_keep_their_python_types() -> None:
    document = _document("loans")["attributes"]
    document["schema"]["columns"][0].update(minimum=0, maximum=1e6, mean_between=[100, 5000.5])
    pipeline = pipeline_from_attributes(copy.deepcopy(document))
    amount = pipeline.schema.columns[0]
    assert (type(amount.minimum), type(amount.maximum)) == (int, float)
    assert amount.mean_between == (100, 5000.5)
    document["schema"]["min_rows"] = True  # a boolean is not a number
    document["policy"]["min_roc_auc"] = "0.9"  # nor is text
    with pytest.raises(ConfigurationError) as refused:
        pipeline_from_attributes(document)
    assert "schema.min_rows: must be a whole number, found True" in str(refused.value)
    assert "policy.min_roc_auc: must be a number, found '0.9'" in str(refused.value)


def _dg(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    environment.update(env or {})
    return subprocess.run(
        [str(DG), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )


def test_dg_scaffolds_a_pipeline_that_loads(tmp_path, monkeypatch) -> None:
    root, package = _project(tmp_path, {})
    env = {"PYTHONPATH": str(root)}
    scaffolded = _dg("scaffold", "defs", TYPE, "loans", cwd=root, env=env)
    assert scaffolded.returncode == 0, scaffolded.stderr
    written = root / package / "defs" / "loans" / "defs.yaml"
    assert written.read_text().startswith("# A secure ML pipeline")
    (pipeline,) = folder_pipelines(_tree(root, package, monkeypatch))
    assert pipeline.name == "loans"
    assert pipeline.source.location_env_var == "LOANS_SOURCE_URI"
    checked = _dg("check", "defs", cwd=root, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully." in checked.stdout
    named = _dg("scaffold", "defs", TYPE, "credit", "--name", "Credit-Risk", cwd=root, env=env)
    assert named.returncode != 0
    assert "pipeline name 'Credit-Risk' must be snake_case" in named.stdout + named.stderr


def test_dg_lists_and_checks_the_project() -> None:
    listed = _dg("list", "components", "--json", cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    assert TYPE in {entry["key"] for entry in json.loads(listed.stdout)["items"]}
    checked = _dg("check", "defs", cwd=REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All component YAML validated successfully." in checked.stdout
    defs = _dg("list", "defs", "--json", cwd=REPO)
    assert defs.returncode == 0, defs.stderr
    jobs = {job["name"] for job in json.loads(defs.stdout)["jobs"]}
    assert jobs == {"adult_ingest", "adult_train", "adult_release", "adult_monitor",
                    "adult_rollback"}  # fmt: skip


def test_roles_sources_and_derived_columns_read_from_yaml() -> None:
    attributes = _document("loans")["attributes"]
    attributes["schema"]["columns"] = [
        {"name": "applicant", "dtype": "string", "role": "personal", "source": "Name"},
        {"name": "applied", "dtype": "date", "format": "%d/%m/%Y", "earliest": "2000-01-01"},
        {"name": "amount", "dtype": "float", "minimum": 0},
        {"name": "region", "dtype": "category", "allowed": ["north", "south", "east", "west"]},
        {"name": "approved", "dtype": "category", "allowed": ["yes", "no"], "role": "label"},
    ]
    del attributes["schema"]["label"]
    attributes["sensitive_features"] = []
    attributes["features"] = {
        "derived": [
            {
                "name": "coast",
                "kind": "map",
                "source": "region",
                "values": {"north": "inland", "south": "coast", "east": "coast", "west": "inland"},
                "sensitive": True,
            }
        ]
    }
    attributes["model"]["estimator"] = "sklearn.ensemble.HistGradientBoostingClassifier"
    attributes["model"]["exclude_features"] = ["coast"]
    pipeline = pipeline_from_attributes(attributes, prefix=("attributes",))
    assert pipeline.schema.label == "approved"
    assert pipeline.sensitive_features == ("coast",)
    assert pipeline.features.derived[0].values[1] == ("south", "coast")
    assert "applicant" not in pipeline.schema.kept_names

    broken = copy.deepcopy(attributes)
    broken["features"]["derived"][0]["values"]["nort"] = broken["features"]["derived"][0][
        "values"
    ].pop("north")
    broken["model"]["estimator"] = "sklearn.ensemble.HistGradientBoostingClasifier"
    with pytest.raises(ConfigurationError) as refused:
        pipeline_from_attributes(broken, prefix=("attributes",))
    message = str(refused.value)
    assert "attributes.features.derived[0].values: derived map 'coast' maps ['nort']" in message
    assert "attributes.model.estimator: model estimator" in message
