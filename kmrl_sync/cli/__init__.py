"""The command line, `kmrl-sync` (main.py), with its progress display and the queue view."""
