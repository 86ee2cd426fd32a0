"""Data quality: the report a user reads before pressing Train."""
