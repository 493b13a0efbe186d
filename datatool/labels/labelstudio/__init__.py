"""Label Studio: brush RLE and configs (formats) and push + sync (sync)."""
