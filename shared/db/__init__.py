"""Database access: the async engine factory and the ORM models."""
