"""Assistance for raters from a model: drafts (prelabel), the ML backend (serve, connect) and
what to label next. Sits above ``labels`` and ``learning`` and imports from both; nothing below
imports it."""
