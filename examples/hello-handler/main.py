"""hello-handler: a plain handler, served by ``python3 -m fum main:handle``."""

import fum


def handle(params):
    """Greet params["name"] (default "world"); a name that is not a string is an error."""
    name = params.get("name", "world")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    return {"greeting": f"hello {name}", "call": fum.Fum.current_uuid}
