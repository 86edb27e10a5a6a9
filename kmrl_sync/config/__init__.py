"""Configuration: the models (no I/O, no import of ours), the loader that reads `sync.yaml` and the
connector files, bounded file and secret reading, the connector-type registry, option types and
globs, and the JSON schema of it all."""
