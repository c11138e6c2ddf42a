"""Residual recurrent image codec of Toderici et al., "Full Resolution Image Compression with
Recurrent Neural Networks", CVPR 2017, in PyTorch."""

from codec.bitstream import compress, decompress, decompress_progressive
from codec.checkpoint import load_checkpoint, model_id, save_checkpoint, warm_start
from codec.errors import CodecError
from codec.image import load_image, save_png
from codec.losses import LOSSES, codec_loss
from codec.metrics import ms_ssim, psnr, rd_auc
from codec.model import CELLS, MODES, CodecConfig, RNNCodec
from codec.training import evaluate, train_step

__all__ = [
    "CELLS", "LOSSES", "MODES", "CodecConfig", "CodecError", "RNNCodec", "codec_loss", "compress",
    "decompress", "decompress_progressive", "evaluate", "load_checkpoint", "load_image", "model_id",
    "ms_ssim", "psnr", "rd_auc", "save_checkpoint", "save_png", "train_step", "warm_start",
]
