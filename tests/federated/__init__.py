"""Tests of mediflow/federated/: partitions, statistics, privacy accounting, Flower on loopback."""
