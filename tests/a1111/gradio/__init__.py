"""Tiny stand-in for the gradio 3.41 API that AUTOMATIC1111 1.10 ships (components, layout blocks, gr.update)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__version__ = "3.41.2-standin"

created: list[Block] = []
"""Every component/block created while a `with` layout block is open (or any time, for simplicity)."""

_context: list[Block] = []


def reset_created() -> None:
    """Stand-in helper: forget all recorded components (call between tests)."""
    created.clear()
    _context.clear()


def find_by_elem_id(elem_id: str) -> Block:
    """Stand-in helper: return the last created component whose elem_id matches exactly."""
    for comp in reversed(created):
        if getattr(comp, "elem_id", None) == elem_id:
            return comp
    raise KeyError(elem_id)


def update(**kwargs: Any) -> dict[str, Any]:
    """Mirrors gradio 3.41 gr.update: a plain dict tagged as an update."""
    return {"__type__": "update", **kwargs}


class Block:
    """Mirrors gradio.blocks.Block: stores constructor kwargs as attributes and records listeners."""

    def __init__(self, value: Any = None, **kwargs: Any) -> None:
        self.value = value
        self.label: str | None = kwargs.pop("label", None)
        self.elem_id: str | None = kwargs.pop("elem_id", None)
        self.visible: bool = kwargs.pop("visible", True)
        self.interactive: bool | None = kwargs.pop("interactive", None)
        self.elem_classes = kwargs.pop("elem_classes", None)
        for key, val in kwargs.items():
            setattr(self, key, val)
        self.listeners: list[tuple[str, Callable | None, Any, Any]] = []
        self.parent = _context[-1] if _context else None
        self.children: list[Block] = []
        if self.parent is not None:
            self.parent.children.append(self)
        created.append(self)

    def _listen(self, event: str, fn: Callable | None, inputs: Any = None, outputs: Any = None, **_: Any) -> Block:
        self.listeners.append((event, fn, inputs, outputs))
        return self

    def click(self, fn: Callable | None = None, inputs: Any = None, outputs: Any = None, **kw: Any) -> Block:
        """Mirrors gradio event listener .click(fn, inputs, outputs)."""
        return self._listen("click", fn, inputs, outputs, **kw)

    def change(self, fn: Callable | None = None, inputs: Any = None, outputs: Any = None, **kw: Any) -> Block:
        """Mirrors gradio event listener .change(fn, inputs, outputs)."""
        return self._listen("change", fn, inputs, outputs, **kw)

    def input(self, fn: Callable | None = None, inputs: Any = None, outputs: Any = None, **kw: Any) -> Block:
        """Mirrors gradio event listener .input(fn, inputs, outputs)."""
        return self._listen("input", fn, inputs, outputs, **kw)

    def release(self, fn: Callable | None = None, inputs: Any = None, outputs: Any = None, **kw: Any) -> Block:
        """Mirrors gradio Slider.release(fn, inputs, outputs)."""
        return self._listen("release", fn, inputs, outputs, **kw)

    def then(self, fn: Callable | None = None, inputs: Any = None, outputs: Any = None, **kw: Any) -> Block:
        """Mirrors gradio dependency chaining .then(...)."""
        return self._listen("then", fn, inputs, outputs, **kw)


class _Layout(Block):
    """Mirrors gradio.blocks.BlockContext: a layout block usable as a context manager."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(None, **kwargs)

    def __enter__(self) -> _Layout:
        _context.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _context.pop()


class Blocks(_Layout):
    """Mirrors gradio.Blocks (the app root)."""


class Row(_Layout):
    """Mirrors gradio.Row."""


class Column(_Layout):
    """Mirrors gradio.Column."""


class Group(_Layout):
    """Mirrors gradio.Group."""


class Accordion(_Layout):
    """Mirrors gradio.Accordion(label, open=...)."""

    def __init__(self, label: str | None = None, open: bool = True, **kwargs: Any) -> None:
        super().__init__(label=label, open=open, **kwargs)


class Tab(_Layout):
    """Mirrors gradio.Tab."""


class Checkbox(Block):
    """Mirrors gradio.Checkbox(value=False, label=...)."""

    def __init__(self, value: bool = False, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Slider(Block):
    """Mirrors gradio.Slider(minimum, maximum, value, step, label=...)."""

    def __init__(self, minimum: float = 0, maximum: float = 100, value: float | None = None, step: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(minimum if value is None else value, minimum=minimum, maximum=maximum, step=step, **kwargs)


class Dropdown(Block):
    """Mirrors gradio.Dropdown(choices, value, type='value'|'index', multiselect=...)."""

    def __init__(self, choices: list | None = None, value: Any = None, type: str = "value", **kwargs: Any) -> None:
        super().__init__(value, choices=list(choices or []), type=type, **kwargs)


class CheckboxGroup(Block):
    """Mirrors gradio.CheckboxGroup(choices, value=[...]): one checkbox per choice; the value is the checked list."""

    def __init__(self, choices: list | None = None, value: list | None = None, **kwargs: Any) -> None:
        super().__init__(list(value or []), choices=list(choices or []), **kwargs)


class Radio(Dropdown):
    """Mirrors gradio.Radio(choices, value, type=...)."""


class Textbox(Block):
    """Mirrors gradio.Textbox(value='', lines=1, ...)."""

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Number(Block):
    """Mirrors gradio.Number(value, precision=...)."""

    def __init__(self, value: float | None = None, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Button(Block):
    """Mirrors gradio.Button(value='Run', variant=...)."""

    def __init__(self, value: str = "Run", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class Markdown(Block):
    """Mirrors gradio.Markdown(value)."""

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class HTML(Block):
    """Mirrors gradio.HTML(value)."""

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value, **kwargs)


class State(Block):
    """Mirrors gradio.State(value)."""


class Request:
    """Mirrors gradio.Request (only .username is read by the host)."""

    def __init__(self, username: str | None = None) -> None:
        self.username = username


def Warning(message: str) -> None:
    """Mirrors gradio.Warning (a toast); the stand-in does nothing."""


class components:
    """Mirrors the gradio.components namespace for isinstance checks."""

    Component = Block


class blocks:
    """Mirrors the gradio.blocks namespace (modules/scripts.py annotates with gr.blocks.Block)."""

    Block = Block
