"""The FastAPI service: the analysis API, the study store's routes and the doctor's web page, in one process."""
