"""End-to-end tests: real `mediflow serve`, `mediflow dicom-node`, Orthanc and PostgreSQL processes."""
