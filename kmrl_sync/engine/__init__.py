"""One sync: the runner, a connector's state in Redis, committing batches, queue formats, key names,
leases, the Redis connection and the Lua scripts (lua/); and what a connector type is to the engine:
the contract every type implements (connector.py) and the registry of installed types (registry.py).
The connector types (connectors/) build on the engine; the engine never imports them."""
