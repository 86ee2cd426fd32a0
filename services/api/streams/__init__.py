"""The streams domain of the API."""
