"""The ``secure-pipeline`` command line: one module per command group.

Commands read the same environment as the code location (``SECURE_PIPELINE_ENV`` and the
variables in the README), so they look at the same store the pipeline writes to.

Exit codes: 0 success, 1 a check failed (broken audit trail, tampered data), 2 bad usage or
configuration.
"""

from typing import Any

import click

from secure_pipeline.cli import audit, certs, keys, live, models, oci, privacy, serving
from secure_pipeline.cli import metrics as metrics_cli
from secure_pipeline.cli._common import _fail
from secure_pipeline.errors import ConfigurationError, SecurePipelineError


class _Commands(click.Group):
    """Commands whose failures end in one line naming what to do, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            _fail(str(exc), 2)
        except SecurePipelineError as exc:
            _fail(str(exc), 1)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(f"{exc.strerror or type(exc).__name__}{where}", 2)


@click.group(cls=_Commands)
@click.version_option(package_name="secure-pipeline", prog_name="secure-pipeline")
def main() -> None:
    """Secure ML pipeline tools: evidence, audit, trust, serving, privacy, OCI, monitoring."""


main.add_command(audit.audit)
for command in (models.status, models.verify, models.evidence, models.approve, models.rollback):
    main.add_command(command)
main.add_command(keys.keys)
main.add_command(keys.trust)
main.add_command(certs.certs)
main.add_command(serving.serve)
main.add_command(serving.serving)
main.add_command(privacy.privacy)
main.add_command(oci.oci)
main.add_command(metrics_cli.metrics)
main.add_command(live.live)

__all__ = ["main"]
