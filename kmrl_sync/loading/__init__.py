"""Loading the configuration: `sync.yaml` and the connector files into a validated `Config` (loader),
each connector's options checked against its installed type and each queue name against the key
layout (both the engine's), and the JSON schema of it all (schema).

Here rather than in config/ because it asks the engine: config/ holds the types every layer
imports, the engine among them, so it can ask nothing of the layers above it."""
