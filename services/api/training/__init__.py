"""The training domain of the API."""
