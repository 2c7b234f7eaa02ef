"""``python -m fum_cli``: the ``fum`` command (``fum up --detach`` runs itself this way)."""

from fum_cli.main import app

app(prog_name="fum")
