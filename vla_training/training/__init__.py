"""Training: one loop for every expert, on one process or several (torchrun / DDP).

config.py         `train:` section of a config file (TrainConfig) and how overrides reach it
train.py          the Trainer: data loading, optimisation, validation, checkpoints, resume
train_state.py    the trainer's resumable state without pickle
ema.py            exponential moving average of the trainable parameters
feature_cache.py  stage-1 cache of frozen-backbone features (`vla cache build`)
commands.py       `vla train` and `vla cache build`
"""
