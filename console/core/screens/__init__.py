"""Base screens every feature builds on: the console screen, the filtered fleet-table screen, confirm, help, actions."""
