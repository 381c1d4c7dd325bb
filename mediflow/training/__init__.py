"""Training: recipes, feature caching, calibration, distributed helpers."""
