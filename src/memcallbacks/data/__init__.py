"""What users wrap their data with: stable sample ids and canaries."""

from memcallbacks.data.indexed import IndexedDataset, split_index

__all__ = ["IndexedDataset", "split_index"]
