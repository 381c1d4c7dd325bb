"""Tests of mediflow/data/ and mediflow/preprocessing.py: reading, decoding (DICOM, JPEG, PNG), framing and
harmonizing films."""
