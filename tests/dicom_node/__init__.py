"""Tests of mediflow/dicom_node/'s parts without the network."""
