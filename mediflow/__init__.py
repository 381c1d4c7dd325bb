"""MediFlow: pediatric chest X-ray pneumonia screening (train, evaluate, serve)."""

__version__ = "0.1.0"

DISCLAIMER = "AI-assisted preliminary reading. Clinical correlation required."
