"""datatool: from a folder of ultrasound DICOM exams to a versioned, double-blind-labelled
segmentation dataset."""

__version__ = "0.1.0"
