"""DICOM exams in: files, DICOM decoding, de-identification, the clinical table, the ingest pipeline."""
