"""Files -> images -> datasets."""
