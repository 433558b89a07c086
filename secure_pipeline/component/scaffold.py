"""``dg scaffold defs secure_pipeline.SecurePipelineComponent <name>``: a pipeline to start from.

The scaffolded ``defs.yaml`` is a small, valid pipeline (it loads as written) whose comments say
what each setting means and which ones a team must change; ``dg check defs`` then validates
every edit.
"""

import re
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, Field

from secure_pipeline.errors import ConfigurationError

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

TEMPLATE = """\
# A secure ML pipeline: ingestion, validation, features, training with its ML security gates,
# the signed registry and promotion. The attributes are the SecurePipeline spec, key for key
# (README, "Build your own pipeline"); `dg check defs` reports every problem at its YAML path.
type: {type_name}

attributes:
  name: {name}  # snake_case: prefixes every asset key ({name}/...), job and registered model
  description: What the model predicts, and for whom.
  owners: ["team:ml-platform"]
  code_version: "1"  # recorded in every manifest; change it when the pipeline's logic changes

  source:
    name: {name}  # the raw asset is {name}/raw_{name}
    # The default location. A deployment points the pipeline at its own copy with the variable
    # below (required in production, https:// or s3://). Never write a secret or a template
    # ({{{{ ... }}}}) into this file: it is shown in the UI and recorded in signed manifests.
    location: "file:///srv/landing/{name}/"
    location_env_var: {env_name}_SOURCE_URI
    files:
      - {{member: main, path: {name}.csv}}
    max_bytes: 268435456  # 256 MiB: a larger file is refused before it is stored

  schema:
    name: {name}
    has_header: true
    label: approved
    positive_label: "yes"  # quoted: YAML reads a bare yes as true
    min_rows: 100
    columns:  # in file order; each value is checked, failing rows are quarantined
      - {{name: amount, dtype: float, minimum: 0, description: Requested amount.}}
      - {{name: region, dtype: category, allowed: [north, south, east, west]}}
      - {{name: approved, dtype: category, allowed: ["yes", "no"]}}
      # Roles: identifier (kept, never an input), personal (dropped at entry, or kept as a
      # keyed hash with pseudonymise: true), ignore (presence checked, never read):
      # - {{name: applicant, dtype: string, role: personal, source: "Applicant Name"}}
      # - {{name: applied, dtype: date, format: "%d/%m/%Y", earliest: "2000-01-01"}}

  # Columns naming protected groups: audited for fairness, never logged.
  sensitive_features: [region]

  # features:
  #   derived:  # computed the same way in training and serving
  #     - {{name: coast, kind: map, source: region, sensitive: true,
  #        values: {{north: inland, south: coast, east: coast, west: inland}}}}

  policy:  # thresholds of the gates (the rest keep their defaults)
    max_reject_rate: 0.01
    min_roc_auc: 0.8

  model:
    estimator: logistic_regression  # or an import path: sklearn.ensemble.ExtraTreesClassifier
    exclude_features: [region]  # audited, not an input
    train_member: main
    test_member: null  # judged on the rows held out of the training file

  # orchestration:
  #   ingest_cron: "0 2 * * *"
  #   landing_env_var: {env_name}_LANDING_URI  # an s3://bucket/prefix/ the sensor watches
"""


class ScaffoldParams(BaseModel):
    """What ``dg scaffold defs`` may be told (``--name``)."""

    name: str | None = Field(
        default=None,
        description="Pipeline name (snake_case); by default the name of the defs folder.",
    )


class SecurePipelineScaffolder(dg.Scaffolder[ScaffoldParams]):
    """Writes a commented, valid ``defs.yaml`` for a new pipeline."""

    @classmethod
    def get_scaffold_params(cls) -> type[ScaffoldParams]:
        """The parameters ``dg scaffold defs`` accepts."""
        return ScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[ScaffoldParams]) -> None:
        """Write the ``defs.yaml``.

        Raises:
            ConfigurationError: When the pipeline name is not snake_case, or Python was asked
                for (a Python pipeline is a `SecurePipeline`, see the README).
        """
        if request.scaffold_format != "yaml":
            raise ConfigurationError(
                "a secure pipeline is scaffolded as YAML; in Python, declare a SecurePipeline "
                "spec and wrap it: SecurePipelineComponent(spec)"
            )
        name = (request.params.name if request.params else None) or request.target_path.name
        if not _NAME.match(name):
            raise ConfigurationError(
                f"pipeline name {name!r} must be snake_case: a lowercase letter, then lowercase "
                "letters, digits or '_' (at most 48 characters); pass --name or rename the folder"
            )
        text = scaffolded_yaml(request.type_name, name)
        if request.append:
            with Path(request.target_path).open("a", encoding="utf-8") as file:
                file.write("---\n" + text)
        else:
            (request.target_path / "defs.yaml").write_text(text, encoding="utf-8")


def scaffolded_yaml(type_name: str, name: str) -> str:
    """The ``defs.yaml`` text of a new pipeline."""
    return TEMPLATE.format(type_name=type_name, name=name, env_name=name.upper())
