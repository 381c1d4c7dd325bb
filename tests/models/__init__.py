"""Tests of mediflow/models/: the architectures and their weights."""
