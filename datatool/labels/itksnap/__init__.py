"""ITK-SNAP: file formats (formats) and export + sync (sync)."""
