"""Checkpoint -> predictions: the predictor shared by the CLI, evaluation and the API."""
