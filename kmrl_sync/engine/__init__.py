"""One sync: the runner, a connector's state in Redis, committing batches, queue formats, key names,
leases, the Redis connection and the Lua scripts (lua/)."""
