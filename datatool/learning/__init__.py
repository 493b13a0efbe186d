"""Patient-level splits, the data pipeline, training and scoring of the model."""
