"""Batch archival recompression of stored images with the ConvNeXt-ChARM learned codec."""

__version__ = "0.1.0"
