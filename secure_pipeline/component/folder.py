"""`SecurePipelineComponent` and the defs folder its instances live in."""

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import (
    BaseModel,
)

from secure_pipeline.component.reading import pipeline_from_attributes
from secure_pipeline.component.scaffold import SecurePipelineScaffolder
from secure_pipeline.component.schema import _RawAttributes
from secure_pipeline.errors import ConfigurationError
from secure_pipeline.pipeline import (
    SecurePipeline,
)

if TYPE_CHECKING:
    pass


@dg.scaffold_with(SecurePipelineScaffolder)
class SecurePipelineComponent(dg.Component, dg.Resolvable):
    """A secure ML pipeline declared in YAML, every stage with its security control.

    Ingestion, validation, features, training with the ML security gates, the signed registry
    and promotion, as `SecurePipeline.build_definitions()` builds them. The attributes are the
    `secure_pipeline.SecurePipeline` spec (see the README's "Build your own pipeline"); every
    problem in them is reported at once, each at its YAML path. In Python,
    ``SecurePipelineComponent(spec)`` wraps a spec declared there.

    Args:
        pipeline: The pipeline's spec.
    """

    def __init__(self, pipeline: SecurePipeline) -> None:
        if not isinstance(pipeline, SecurePipeline):
            raise TypeError(f"a SecurePipeline spec is required, found {type(pipeline).__name__}")
        self.pipeline = pipeline
        # Where the instance was declared (its defs folder path), to name it in errors.
        self.defs_path: Path | None = None

    @classmethod
    def model(cls) -> type[BaseModel]:
        """The attributes model Dagster validates against (the component checks them itself)."""
        return _RawAttributes

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        """What ``dg list components`` and the UI show of the component type."""
        return dg.ComponentTypeSpec(
            description=(
                "A secure ML pipeline declared in YAML: every stage with its security control, "
                "signed lineage and a fail-closed promotion gate."
            ),
            tags=["secure_pipeline", "ml", "security"],
            produces=["asset", "asset_check", "job", "schedule", "sensor", "resource"],
        )

    @classmethod
    def resolve_from_model(
        cls, context: dg.ResolutionContext, model: BaseModel
    ) -> "SecurePipelineComponent":
        """The component of validated attributes.

        Raises:
            ConfigurationError: Listing every problem of the attributes, each with its path.
        """
        return cls(
            pipeline_from_attributes(
                dict(model.model_extra or {}),
                prefix=tuple(context.path),
                positions=context.source_position_tree,
            )
        )

    @classmethod
    def load(
        cls, attributes: BaseModel | None, context: dg.ComponentLoadContext
    ) -> "SecurePipelineComponent":
        """The component declared by a ``defs.yaml``.

        Raises:
            ConfigurationError: When the file has no attributes, or they are invalid.
        """
        if attributes is None:
            raise ConfigurationError(
                f"{context.path}: a SecurePipelineComponent needs its attributes (name, source, "
                "schema, ...); `dg scaffold defs secure_pipeline.SecurePipelineComponent NAME` "
                "writes a starting point"
            )
        component = super().load(attributes, context)
        component.defs_path = context.path
        return component

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The pipeline's definitions.

        Their resources and ad-hoc executor are the same objects as every other pipeline's of
        the process, so Dagster merges the components of one defs folder.
        """
        from secure_pipeline.compose import build_definitions

        return build_definitions([self.pipeline])


def folder_pipelines(tree: dg.ComponentTree) -> list[SecurePipeline]:
    """The specs of every `SecurePipelineComponent` of a defs folder, without building them.

    Args:
        tree: The defs folder's component tree.

    Raises:
        ConfigurationError: When a pipeline's component is invalid (its file and every problem
            named), or two declare the same pipeline name.
    """
    with _dagster_loading():
        components = tree.get_all_components(of_type=SecurePipelineComponent)
    by_name: dict[str, list[str]] = {}
    for component in components:
        by_name.setdefault(component.pipeline.name, []).append(str(component.defs_path))
    twice = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if twice:
        raise ConfigurationError(
            "pipeline names must be unique in a code location (every asset key, job and "
            "registered model is named after them): "
            + "; ".join(f"{name!r} is declared in {' and '.join(p)}" for name, p in twice.items())
        )
    return [component.pipeline for component in components]


def build_folder_definitions(tree: dg.ComponentTree) -> dg.Definitions:
    """Every definition of a defs folder, its pipelines checked together first.

    What one pipeline cannot see is checked here: unique names, every source variable of
    every pipeline in one message, and one place for ad-hoc runs. Then Dagster builds and
    merges the folder's components (pipelines and anything else in it).

    Args:
        tree: The defs folder's component tree.

    Raises:
        ConfigurationError: Listing what is wrong.
    """
    from secure_pipeline import environment as env

    pipelines = folder_pipelines(tree)
    variables: dict[str, str] = {}
    for pipeline in pipelines:
        variables.update(pipeline.source_variables())
    checked = env.validate(None, source_variables=variables)
    from secure_pipeline.orchestration.jobs import KUBERNETES, adhoc_executor_config

    if env.executor_mode(checked) == KUBERNETES:
        places = {repr(adhoc_executor_config(p.orchestration)) for p in pipelines}
        if len(places) > 1:
            raise ConfigurationError(
                "the pipelines of one code location must send ad-hoc runs to the same place: "
                "their orchestration settings (control namespace, image) differ: "
                + ", ".join(p.name for p in pipelines)
            )
    with _dagster_loading():
        return tree.build_defs()


@contextlib.contextmanager
def _dagster_loading() -> Iterator[None]:
    """Load through Dagster's component tree, reporting a pipeline's own error as such.

    Dagster wraps what a component raises in an error showing the tree; the pipeline's
    `ConfigurationError` already names its file and every problem, and the command line
    reports a `ConfigurationError` in one line instead of a traceback. Anything else is
    re-raised as Dagster raised it.
    """
    # Dagster's own loading machinery is in preview and beta and warns about itself on every
    # load; `dg.load_from_defs_folder` silences the same warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        warnings.simplefilter("ignore", dg.BetaWarning)
        try:
            yield
        except ConfigurationError:
            raise
        except Exception as exc:
            cause = exc.__cause__
            while cause is not None and not isinstance(cause, ConfigurationError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise ConfigurationError(str(cause)) from exc
