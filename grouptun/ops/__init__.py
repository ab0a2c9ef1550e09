"""Running and watching the daemon: systemd notify, logging, metrics, the control socket, hooks."""
