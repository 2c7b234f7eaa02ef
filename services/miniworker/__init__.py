"""The miniworker: owns one sandbox, speaks FUM with it, runs one call at a time."""
