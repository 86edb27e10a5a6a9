"""Content storage: the blob store a connector writes document bodies to, and its files."""
