"""kmrl-sync: keeps the KMRL Knowledge Hub's processing queues fed from mail, folders and SharePoint."""

__version__ = "0.1.0"
