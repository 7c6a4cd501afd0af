"""`python -m rlt` runs the `rlt-prep` command line."""

from rlt.cli import app

app()
