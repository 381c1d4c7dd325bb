"""Tests of mediflow/training/: training recipes, quantization-aware distillation and site calibration."""
