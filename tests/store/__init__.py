"""Tests of mediflow/store/: the study store, its migrations and the feedback export."""
