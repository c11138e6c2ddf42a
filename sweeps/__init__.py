"""Ray Tune sweeps of codec trials, Weights & Biases logging, reports, and the ``rnncodec`` command
line (:mod:`rnncodec.sweeps.cli`). The only package that knows Ray and W&B."""
