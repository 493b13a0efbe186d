"""The workspace core: workspace, catalogue, store, atomic writes, label protocols, errors."""
