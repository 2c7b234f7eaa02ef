"""The worker: one per node. Keeps a pool of miniworkers and brokers calls to them."""
