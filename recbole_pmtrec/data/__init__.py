"""Datasets with auxiliary relations, auxiliary-task samplers and raw-data converters."""
