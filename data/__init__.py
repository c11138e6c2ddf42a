"""Training data for the codec: CIFAR and photo sources, Arrow shards, memory-mapped reading.

``prepare`` builds (or reuses) a cached folder of shards, ``open_split`` reads one split of it, and
``data.loader.BatchLoader`` (the torch adapter, imported separately) yields uint8 batches.
"""

from data.cache import default_cache_dir
from data.errors import DataError
from data.photos import sample_images
from data.prepare import SOURCES, prepare
from data.reader import EpochSampler, ShardReader, open_split
from data.remote import resolve

__all__ = [
    "SOURCES",
    "DataError",
    "EpochSampler",
    "ShardReader",
    "default_cache_dir",
    "open_split",
    "prepare",
    "resolve",
    "sample_images",
]
