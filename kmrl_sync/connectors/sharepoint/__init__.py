"""SharePoint connector (Microsoft Graph driveItem delta); see connector.py."""

from .connector import SharePointConnector

__all__ = ["SharePointConnector"]
