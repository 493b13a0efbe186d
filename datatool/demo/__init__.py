"""The synthetic demo study."""
