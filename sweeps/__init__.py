"""Ray Tune sweeps, W&B logging, checkpoints, reports and the ``rnncodec`` command line."""
