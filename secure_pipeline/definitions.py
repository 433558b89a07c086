"""The code location: ``secure_pipeline.definitions:defs``.

Definitions are built lazily, when Dagster asks for them, so importing this module costs little
more than importing dagster itself. Every run worker and step process pays that import.
"""

import dagster as dg


def pipelines() -> list:
    """The pipelines of this code location (the command line picks one by name from these)."""
    from secure_pipeline.reference.adult import adult_pipeline

    return [adult_pipeline()]


@dg.definitions
def defs() -> dg.Definitions:
    """The code location's pipelines for the current environment (``SECURE_PIPELINE_ENV``)."""
    from secure_pipeline.compose import build_definitions

    return build_definitions(pipelines())
