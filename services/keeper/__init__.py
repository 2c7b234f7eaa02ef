"""The keeper: ZooKeeper's data model and client protocol, for functions (docs/KEEPER.md)."""
