"""The ``fum`` command line."""
