"""Form controls bound to a key of a dict (the raw experiment, a section, a student).

Each control carries its FieldSpec and target dict, edits `target[spec.key]` (dotted keys
allowed) as the user types, and posts FormChanged so Compose re-validates. Rows are laid out by
a two-column Grid (label, control) rather than one container per row: Compose has ~40 fields
and every extra node costs style work when the screen is shown.
"""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.containers import Grid
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Static

from app.data.form_fields import FieldSpec, arch_placeholder, format_field, get_key, parse_field, set_key
from app.messages import FormChanged
from app.textual_workarounds import InOrderInput
from app.widgets.checkbox import StateCheckbox

ARCH = "model.arch."  # a scratch teacher's keys: their placeholders follow its model_type


class _Bound:
    spec: FieldSpec
    target: dict[str, Any]

    def _store(self: Any, value: Any) -> None:
        old = get_key(self.target, self.spec.key)
        if value == old or (value in ("", None, []) and old is None):
            return
        set_key(self.target, self.spec.key, value)
        self.post_message(FormChanged(self.spec.key))


class FieldInput(_Bound, InOrderInput):
    # a placeholder in italics, besides Textual's dim colour: on a monochrome terminal (or a
    # screenshot) "default 30" otherwise read as a typed 30
    DEFAULT_CSS = """
    FieldInput > .input--placeholder { text-style: italic; }
    """

    def __init__(self, spec: FieldSpec, target: dict[str, Any], **kwargs):
        super().__init__(format_field(spec.kind, get_key(target, spec.key)), placeholder=self._hint(spec, target),
                         compact=True, **kwargs)
        self.spec, self.target = spec, target

    @staticmethod
    def _hint(spec: FieldSpec, target: dict[str, Any]) -> str:
        """The spec's placeholder; a scratch teacher's key: what its arch's model_type gives it."""
        if spec.key.startswith(ARCH):
            return arch_placeholder(spec.key.removeprefix(ARCH), get_key(target, "model.arch") or {})
        return spec.placeholder

    def refresh_hint(self) -> None:
        """After the arch's type (or its heads) changed: the defaults an empty field now gives."""
        self.placeholder = self._hint(self.spec, self.target)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._store(parse_field(self.spec.kind, event.value))


class FieldSelect(_Bound, Static, can_focus=True):
    """A choice, shown as `‹ value ›`: space, enter or → picks the next one, ← the previous,
    a click the next; blank (`default`) leaves the key out. One widget where Textual's Select is
    six (and an option list to style): Compose has one per choice field and every widget of the
    screen is restyled each time it is shown."""

    BINDINGS = [
        Binding("space,enter,right", "cycle(1)", "next choice", show=False),
        Binding("left", "cycle(-1)", "previous choice", show=False),
    ]

    def __init__(self, spec: FieldSpec, target: dict[str, Any], **kwargs):
        value = get_key(target, spec.key)
        self.choices: list[Any] = [None, *spec.choices]
        if value is not None and value not in spec.choices:
            self.choices.append(value)  # keep an invalid value visible; validation reports it
        if value is None:  # set before mounting: a class added on mount restyles the widget again
            kwargs["classes"] = " ".join(filter(None, (kwargs.get("classes"), "-blank")))
        self.spec, self.target = spec, target
        super().__init__(self._label(value), markup=False, **kwargs)
        self._value = value

    def _label(self, value: Any) -> str:
        return f"‹ {self.spec.blank if value is None else value} ›"  # blank: "default ddp", the schema's

    @property
    def value(self) -> Any:
        """The chosen value; None = blank (the key is left out)."""
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        if value not in self.choices:
            self.choices.append(value)
        self._value = value
        self.set_class(value is None, "-blank")
        self.update(self._label(value))
        self._store(value)

    def action_cycle(self, step: int) -> None:
        i = self.choices.index(self._value)  # (the constructor and the setter add any value to choices)
        self.value = self.choices[(i + step) % len(self.choices)]

    def on_click(self) -> None:
        self.action_cycle(1)


class FieldCheck(_Bound, StateCheckbox):
    def __init__(self, spec: FieldSpec, target: dict[str, Any], **kwargs):
        super().__init__("", value=bool(get_key(target, spec.key)), compact=True, **kwargs)
        self.spec, self.target = spec, target

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self._store(True if event.value else None)

    def render(self) -> Content:
        # Textual pads even an empty label by a cell each side but leaves those cells out of the
        # content width: width auto cut the box to "▐X…". The box alone, as wide as it is measured.
        return super().render().rstrip()


def control(spec: FieldSpec, target: dict[str, Any], id_prefix: str | None = "") -> Widget:
    """The control for a spec. `id_prefix` None: no DOM id (student fields repeat their keys)."""
    wid = None if id_prefix is None else "f-" + (id_prefix + spec.key).replace(".", "-").replace("_", "-")
    cls = {"choice": FieldSelect, "bool": FieldCheck}.get(spec.kind, FieldInput)
    return cls(spec, target, id=wid)


def fields(specs, target: dict[str, Any], id_prefix: str | None = "", **kwargs) -> Grid:
    """A label/control grid for `specs`, all editing `target`."""
    cells: list[Widget] = []
    for spec in specs:
        cells += [Label(spec.label), control(spec, target, id_prefix)]
    return Grid(*cells, classes="fields", **kwargs)
