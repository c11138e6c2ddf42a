"""Training data for the codec: CIFAR and photo sources, Arrow shards, memory-mapped reading.

``prepare`` builds (or reuses) a cached folder of shards, ``open_split`` reads one split of it, and
``rnncodec.data.loader.BatchLoader`` (the torch adapter, imported separately) yields uint8 batches.
The attributes below are imported on first use.
"""

from rnncodec.data.lazy import lazy_exports

_API = {
    "SOURCES": "sources", "prepare": "preparation", "DataError": "errors", "RnncodecError": "errors",
    "EpochSampler": "reader", "ShardReader": "reader", "open_split": "reader", "default_cache_dir": "cache",
    "resolve": "remote", "sample_images": "photos", "load_image": "images", "save_png": "images",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
