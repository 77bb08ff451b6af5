"""Operator commands: the runtime subcommands and the queue and dead-letter operations."""
