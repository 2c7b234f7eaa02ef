"""The db service: fum's system of record, SQLite behind a ZeroMQ ROUTER."""
