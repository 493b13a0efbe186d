"""Raters and versioned annotations, masks, matching, and the ITK-SNAP and Label Studio adapters."""
