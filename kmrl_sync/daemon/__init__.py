"""`kmrl-sync run`: the service, its scheduler, heartbeat, watch mode, metrics, systemd notification,
signals, and the status and health views of a fleet."""
