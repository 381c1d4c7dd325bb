"""Tests of mediflow/commands/ and the CLI: flags, help, what the commands print."""
