"""dice: roll dice in FUM style; params {"roll": "4d6"} give a result like [4, 6, 4, 3]."""

import random
import re

from fum import fail, fum_yield, params, result

# Setup, once per container: everything above the loop stays warm between calls.
DICE = re.compile(r"^\s*(\d*)\s*d\s*(\d+)\s*$", re.IGNORECASE)
MAX_DICE = 1000
rng = random.SystemRandom()


def roll(notation):
    """Roll dice written NdM (N dice of M faces, N defaults to 1) and return the faces."""
    match = DICE.match(str(notation))
    if match is None:
        raise ValueError(f"roll must look like 4d6, got {notation!r}")
    count, faces = int(match.group(1) or 1), int(match.group(2))
    if not 1 <= count <= MAX_DICE or faces < 1:
        raise ValueError(f"cannot roll {notation!r}: 1..{MAX_DICE} dice of at least 1 face")
    return [rng.randint(1, faces) for _ in range(count)]


while True:
    fum_yield()  # reports the previous call done, then waits for the next one
    try:
        call = params()
        result(roll(call.get("roll", "1d6") if isinstance(call, dict) else call))
    except Exception as exc:  # a bad call fails alone; the container stays warm
        fail(exc)
