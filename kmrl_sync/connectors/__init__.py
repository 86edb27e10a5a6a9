"""Built-in connector types; each registers through the `kmrl_sync.connectors` entry point group."""
