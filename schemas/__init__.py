"""Label protocols of datatool: one YAML file per study (installed as package data)."""
