"""The skills domain of the API."""
