"""The VMix trainer (in progress): makes adapter files in the format of docs/weights-format.md.

Unlike ``vmix_ext`` this package may use training-only dependencies (Pillow now; the model implementation later).
So far it holds the run configuration, the dataset checker, the AesEmb computation and the training step; checkpoint
loading, the training loop (resume, samples, progress) and the command line are not written yet.
"""
