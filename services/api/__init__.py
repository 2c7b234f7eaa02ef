"""The api: HTTP front door, catalogue of runtimes and functions, and call dispatch."""
