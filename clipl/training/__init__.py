"""The run loop: the Lightning Trainer from TrainerConfig (trainer.py, strategies.py), experiment
tracking (tracking.py), checkpoints and resume (checkpointing.py), SLURM pre-emption (slurm.py), the
progress bar (progress.py) and the end-of-run summary (summary.py); their config sections are the leaf
clipl.training.config.

Import from the modules themselves (``from clipl.training.trainer import build_trainer``): this file
imports nothing, so clipl.distributed can import the leaf clipl.training.config without loading
Lightning or the trainer (which imports clipl.distributed: that would be a circle).
"""
