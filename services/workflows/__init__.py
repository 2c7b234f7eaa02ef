"""Workflows in the unum style: apps, sessions, what runs after each step (docs/WORKFLOWS.md)."""
