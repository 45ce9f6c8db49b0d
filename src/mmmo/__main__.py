"""`python -m mmmo` runs the CLI."""

from mmmo.cli import app

app()
