"""Tests of mediflow/inference/: the predictor, its backends and export, batch and folder analysis, the input check."""
