"""IMAP connector (type `imap`); see connector.py for the entry point and syncer.py for the algorithm."""

from kmrl_sync.connectors.imap.connector import ImapConnector

__all__ = ["ImapConnector"]
