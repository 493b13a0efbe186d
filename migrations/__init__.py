"""Alembic migrations of the datatool catalogue (applied when a workspace is opened)."""
