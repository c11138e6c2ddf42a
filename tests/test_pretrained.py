"""The bundled checkpoint: loads by default, and each iteration improves a real photograph."""

import numpy as np

from rnncodec import codec
from rnncodec.codec.checkpoint import DEFAULT_CHECKPOINT
from rnncodec.data import sample_images


def test_bundled_checkpoint_is_the_default_and_small():
    assert DEFAULT_CHECKPOINT.stat().st_size < 10 * 2**20
    model = codec.load_checkpoint()
    assert model.config.width == 0.25 and model.config.mode == "additive"


def test_psnr_rises_with_every_iteration_of_a_progressive_file():
    model = codec.load_checkpoint()
    image = dict(sample_images())["coffee"][100:292, 200:392]
    data = codec.compress(model, image, iterations=8)
    psnrs = [codec.psnr(image, rec) for rec in codec.decompress_progressive(model, data)]
    assert all(b > a for a, b in zip(psnrs, psnrs[1:])), psnrs
    assert psnrs[-1] > psnrs[0] + 4, psnrs
    assert np.array_equal(codec.decompress(model, data, iterations=3), codec.decompress_progressive(model, data)[2])
