"""The FastAPI service: the design's API and the doctor's web page, in one process."""
