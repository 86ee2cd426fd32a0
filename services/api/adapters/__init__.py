"""The adapters domain of the API."""
