"""The code location: ``secure_pipeline.definitions:defs``.

Its pipelines are component instances in the package's defs folder, one ``defs.yaml`` each
(``secure_pipeline/defs/adult/defs.yaml`` is the reference pipeline); anything else Dagster can
load from a defs folder may sit beside them. Definitions are built lazily, when Dagster asks for
them, so importing this module costs little more than importing dagster itself. Every run
worker and step process pays that import.
"""

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from secure_pipeline.pipeline import SecurePipeline

DEFS_MODULE = "secure_pipeline.defs"


def component_tree() -> dg.ComponentTree:
    """The component tree of the package's defs folder.

    A new one per call: a tree caches what it loads, and the environment may differ between
    calls. This is what ``dg.load_from_defs_folder`` builds after finding the project's
    ``pyproject.toml``; here the tree is built from the package itself, because the production
    image installs the package as a wheel, with no project file to find (and a project file
    found above an installed package would be another project's).
    """
    return dg.ComponentTree.from_module(
        defs_module=importlib.import_module(DEFS_MODULE),
        project_root=Path(__file__).resolve().parent.parent,
    )


def pipelines() -> list["SecurePipeline"]:
    """The pipelines of this code location (the command line picks one by name from these).

    Every `SecurePipelineComponent` of the defs folder, read and validated without building
    any Dagster definitions.
    """
    from secure_pipeline.component import folder_pipelines

    return folder_pipelines(component_tree())


@dg.definitions
def defs() -> dg.Definitions:
    """The code location's pipelines for the current environment (``SECURE_PIPELINE_ENV``)."""
    from secure_pipeline.component import build_folder_definitions

    return build_folder_definitions(component_tree())
