"""``python -m secure_pipeline.cli``: the command line (how a serving slot is started)."""

from secure_pipeline.cli import main

main()
