"""The VMix trainer: makes adapter files in the format of docs/weights-format.md (see docs/training.md).

Unlike ``vmix_ext`` this package may use training-only dependencies (diffusers, transformers, Pillow; tensorboard
optionally). ``python -m vmix_train`` trains from a run config; ``python -m vmix_train.toy`` is the proof of mechanism.
"""
