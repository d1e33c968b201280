"""The model registry: `watchkeeper models register|list|show|alias`."""
