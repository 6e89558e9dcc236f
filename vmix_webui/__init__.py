"""VMix's glue for the A1111-style web UIs: A1111 and the Forge family (Forge, reForge, Forge Classic, Forge Neo).

Unlike ``vmix_ext`` (the torch-only core) this package imports the host: gradio and its ``modules.*``. Each module
has one job: ``hosts`` tells which web UI runs and picks its backend (``a1111_backend`` or ``patcher_backend``),
``generation`` keeps one generation's VMix on its processing object, ``ui``, ``infotext``, ``xyz`` and ``api`` are
the accordion, pasting, the X/Y/Z axes and the HTTP route. ``scripts/vmix.py`` only registers them with the host.

The extension folder is on ``sys.path`` only while the host imports ``scripts/vmix.py``, so that file imports every
module of this package at its top.
"""
