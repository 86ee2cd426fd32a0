"""Operator commands that work on the database directly: keys and workspaces."""
