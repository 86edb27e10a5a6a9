"""Local fake of Microsoft Graph driveItem delta for integration tests (see graph_server)."""
