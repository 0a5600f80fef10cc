"""One module per `tfkit` sub-command: `<name>_command_parser(subparsers)` adds it, `func` runs it."""
