"""What every console feature stands on: talking to agents (errors, client, poller, feeds), the fleet file,
rows and formatting, base screens and widgets. Imports no feature."""
