"""Residual recurrent image codec of Toderici et al., "Full Resolution Image Compression with
Recurrent Neural Networks", CVPR 2017, in PyTorch.

The public API below is imported on first use: ``rnncodec.codec.options`` (the choices and limits)
and ``rnncodec.codec.errors`` load without torch.
"""

from rnncodec.data.lazy import lazy_exports

_API = {
    "compress": "bitstream", "compress_progressive": "bitstream", "decompress": "bitstream",
    "decompress_progressive": "bitstream",
    "load_checkpoint": "checkpoint", "model_id": "checkpoint", "save_checkpoint": "checkpoint",
    "warm_start": "checkpoint", "CodecError": "errors", "LOSSES": "options", "CELLS": "options",
    "MODES": "options", "codec_loss": "losses", "ms_ssim": "metrics", "psnr": "metrics", "rd_auc": "metrics",
    "CodecConfig": "model", "RNNCodec": "model", "Trainer": "training", "TrainConfig": "training",
    "evaluate": "training", "train_step": "training",
    "load_image": "rnncodec.data.images", "save_png": "rnncodec.data.images",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
