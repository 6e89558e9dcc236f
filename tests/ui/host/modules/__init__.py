"""The host's ``modules`` package for the real-gradio UI tests.

``ui_components`` is this folder's (it must build on real gradio, in the form each host uses); every other module
comes from the gradio-independent A1111 stand-in in ``tests/a1111/modules``, which is appended to this package's
search path. The stand-in *gradio* there is never imported: ``tests/a1111`` itself is not put on ``sys.path``
ahead of the real gradio (see ``tests/ui/host_page.py``).
"""

from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[3] / "a1111" / "modules"))
