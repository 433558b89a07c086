"""`SecurePipelineComponent`: a secure pipeline declared in a ``defs.yaml``.

A team declares its pipeline in its project's defs folder, ``defs/<name>/defs.yaml``::

    type: secure_pipeline.SecurePipelineComponent
    attributes:
      name: loans
      source: {name: loans, location: "file:///srv/landing/loans/", ...}
      schema: {name: loans, label: approved, positive_label: "yes", columns: [...]}
      policy: {max_reject_rate: 0.005}

The attributes are the `SecurePipeline` spec, key for key: the YAML schema is derived from the
spec's dataclasses (their fields, types and documented attributes), so the two cannot drift,
and the YAML builds exactly the same frozen dataclasses, checked by the same validation. What
differs is how problems are reported: all of them at once, each at its YAML path and line
(``attributes.policy.min_roc_auc: must be in [0.5, 1], found 2 (line 31)``).

Two YAML conveniences have no Python counterpart: ``aliases`` of a column are a mapping
(``{"<=50K.": "<=50K"}``), and ``location: package:<package>/<folder>/`` names a folder shipped
inside an installed package (the reference pipeline's bundled data); it becomes that folder's
``file://`` URI. A partial ``orchestration.ingest`` (or ``train``, ``registry``) keeps the other
settings of that stage's default isolation.

Locations and secrets are named by environment variable (``location_env_var``,
``landing_env_var``, Kubernetes ``env_secrets``) and read where they are used, at run time.
Templates (``{{ env.X }}``) are refused: the spec is fingerprinted, shown in the UI and recorded
in signed manifests, and the command line reads it without Dagster's templating, so a value
rendered into it at load time would leak into all of those and differ between processes.

The package: `schema` derives the YAML schema from the spec's dataclasses, `reading` turns
attributes into a spec (every problem at its path), `folder` holds the component and the defs
folder functions, `scaffold` writes a new ``defs.yaml``.
"""

from secure_pipeline.component.folder import (
    SecurePipelineComponent,
    build_folder_definitions,
    folder_pipelines,
)
from secure_pipeline.component.reading import pipeline_from_attributes
from secure_pipeline.component.scaffold import SecurePipelineScaffolder, scaffolded_yaml
from secure_pipeline.component.schema import attributes_model

__all__ = [
    "SecurePipelineComponent",
    "SecurePipelineScaffolder",
    "attributes_model",
    "build_folder_definitions",
    "folder_pipelines",
    "pipeline_from_attributes",
    "scaffolded_yaml",
]
