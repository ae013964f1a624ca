"""Ingestion of real pinhole series: discovery, readers (OME-TIFF, TIFF, LIF), units, registration, intensities."""
