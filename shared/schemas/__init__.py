"""Pydantic schemas shared by the API, the worker and the trainer."""
