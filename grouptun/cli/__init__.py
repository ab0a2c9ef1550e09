"""The command line: ``grouptun`` and one module per subcommand; each maps errors to exit codes."""
