"""Trainers: the multi-task trainer that turns per-task losses into one update through a combiner."""
