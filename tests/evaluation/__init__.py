"""Tests of mediflow/evaluation/ and the generalization benchmark built on it."""
