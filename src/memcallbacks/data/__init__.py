"""What users wrap their data with: stable sample ids (map-style and streamed), canaries, the trajectory store."""

from memcallbacks.data.indexed import IndexedDataset, split_index
from memcallbacks.data.streams import IndexedStream, text_id

__all__ = ["IndexedDataset", "IndexedStream", "split_index", "text_id"]
