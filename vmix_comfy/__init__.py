"""VMix for ComfyUI: the node pack's nodes, on the same torch-only core (``vmix_ext``) as the web UIs.

ComfyUI imports the repository root's ``__init__.py``, which loads this package; nothing here imports gradio or a
web UI's ``modules.*``. The ComfyUI modules used are ``folder_paths`` (the adapter folder) and
``comfy.ldm.modules.attention`` (the host's attention function); everything else arrives as node inputs.
"""
