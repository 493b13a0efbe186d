"""DICOM Segmentation (SEG) objects: the format (masks in, datasets out) and the export."""
