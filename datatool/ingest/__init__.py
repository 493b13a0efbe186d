"""DICOM exams in: files, DICOM decoding, de-identification, the clinical table and the
ingest pipeline."""
