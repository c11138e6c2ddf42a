"""Rate–distortion evaluation against other codecs: real-bitstream curves, Pillow baselines, BD-rate,
AUC, plots over published curves, and the Kodak test set. Kept apart from the model package
(:mod:`rnncodec.codec`), as CompressAI keeps ``compressai.utils.eval_model`` apart from its models."""
