"""VMix core: torch-only pieces shared by the A1111 glue, the Forge glue and the trainer.

Nothing in this package imports gradio or a host's ``modules.*``; hosts hand it plain modules and tensors.
"""

__version__ = "0.1.0"
