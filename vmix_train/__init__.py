"""The VMix trainer (in progress): makes adapter files in the format of docs/weights-format.md.

Unlike ``vmix_ext`` this package may use training-only dependencies (Pillow now; the model implementation later).
So far it holds the run configuration, the dataset checker and the AesEmb computation; model loading and the
training loop are not written yet.
"""
