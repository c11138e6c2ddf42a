"""The torch adapter (the only torch import of ``data/``): batches of a ShardReader as uint8 tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rnncodec.data.reader import EpochSampler, ShardReader


class BatchLoader:
    """Iterates one epoch per ``iter()`` as uint8 (B, 3, 32, 32) tensors, resumable through ``state_dict()``.

    Each batch is one gather from the memory-mapped shards into a fresh array that the tensor wraps
    without copying. Scale to floats on the device: ``batch.to(device).float().div_(255)``.
    """

    def __init__(
        self,
        reader: ShardReader,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        state: dict | None = None,
    ) -> None:
        self.reader = reader
        self.sampler = EpochSampler(len(reader), batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
        if state is not None:
            self.sampler.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for indices in self.sampler:
            yield torch.from_numpy(self.reader.images(indices))

    def state_dict(self) -> dict:
        """``{"epoch", "position", "seed"}``: where the next batch comes from."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
