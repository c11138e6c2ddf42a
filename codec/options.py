"""The codec's choices and limits, defined once and importable without torch (sweep-file validation
and the command line read them before anything heavy is loaded)."""

CELLS = ("lstm", "gru")
MODES = ("one-shot", "additive", "residual-scaling")
ACTIVATIONS = ("none", "leaky-relu")
LOSSES = ("l1", "mse", "psnr", "ms-ssim")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("none", "cosine", "step")

STRIDE = 16  # the encoder halves the resolution four times
MAX_ITERATIONS = 16  # the most a file holds (2 bpp)
# Training may run past it, so that iteration 16 is not the last one trained: the last few iterations of a
# training horizon learn least (codec/pretrained/README.md). The weights do not depend on the count.
MAX_TRAIN_ITERATIONS = 24
BITS = 32  # binary codes per 16×16 block: 0.125 bpp per iteration
BPP_PER_ITERATION = BITS / STRIDE**2
MAX_WIDTH = 8.0  # channel multiplier
MAX_CHANNELS = 8192  # any layer, after the width multiplier
MAX_KERNEL = 7  # convolution kernel sides (the paper uses 1 and 3)
MAX_BITS = 1024
MAX_GAIN_GROWTH = 2.0  # fixed residual scaling per iteration (gain 2¹⁵ at iteration 16)
MAX_BATCH = 1 << 16  # patches per step: 0.8 GB of fp32 input alone, far past any paper's 32
LOSS_GROWTH_RANGE = (0.5, 2.0)  # per-iteration loss weighting γ (losses.iteration_weights)
