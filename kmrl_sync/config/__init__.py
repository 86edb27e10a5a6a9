"""The configuration's types, shared by every layer: the models (no I/O, no import of ours), the
option types connector options are built from, globs, and bounded file and secret reading.
Reading `sync.yaml` and the connector files against the installed connector types is loading/'s."""
