"""One [[prune]] student: name, method, its targets, and its size against the teacher."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Button, Label, Static

from app.data import fmt
from app.data.compose import StudentSize
from app.data.form_fields import METHODS, STUDENT_FIELDS, FieldSpec, foreign_keys
from app.messages import FormChanged, StudentRemoved
from app.widgets.compose.fields import fields

NAME = FieldSpec("name", "name", placeholder="required: names its stages, e.g. prune-NAME")
METHOD = FieldSpec("method", "method", "choice", METHODS, blank="none: pick one")


class StudentForm(Vertical):
    def __init__(self, student: dict, **kwargs):
        super().__init__(**kwargs)
        self.student = student

    def compose(self) -> ComposeResult:
        with Horizontal(classes="student-head"):
            yield Label(self._title())
            remove = Button("remove", classes="remove-student", compact=True, variant="error")
            remove.can_focus = False  # not a Tab stop: Enter while tabbing through must not delete (click it)
            yield remove
        yield fields((NAME, METHOD),
                     self.student, id_prefix=None)
        with Vertical(classes="student-targets"):
            yield self._target_rows()
        yield Static("", classes="student-size")

    def control(self, key: str) -> Widget | None:
        """The control editing `key` of this student (None: its method has no such field)."""
        return next((w for w in self.query(".fields > *") if getattr(getattr(w, "spec", None), "key", None) == key),
                    None)

    def _title(self) -> str:
        return f"student '{self.student.get('name', '?')}' ({self.student.get('method', '?')})"

    def _target_rows(self):
        return fields(STUDENT_FIELDS.get(self.student.get("method"), ()), self.student, id_prefix=None)

    async def on_form_changed(self, event: FormChanged) -> None:
        # the event goes on to Compose (re-validation); here: title and the method's fields
        if event.key == "method":
            for k in foreign_keys(self.student.get("method")):
                self.student.pop(k, None)
            box = self.query_one(".student-targets", Vertical)
            await box.remove_children()
            await box.mount(self._target_rows())
        if event.key in ("name", "method"):
            self.query_one(".student-head Label", Label).update(self._title())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.has_class("remove-student"):
            event.stop()
            self.post_message(StudentRemoved(self.student))

    def show_size(self, size: StudentSize | None, teacher_params: int | None, error: str = "") -> None:
        """Its size against the teacher, or what is wrong with it (`error`: "key: why", this student's)."""
        box = self.query_one(".student-size", Static)
        if error:  # in the theme's error colour (the size line's is success green)
            box.update(Content.styled(f"✗ {error}", "$text-error"))
        elif size is None:  # the form does not validate for another reason: Compose's line says why
            box.update("")
        elif size.detail:
            params = f"{fmt.si(size.params)} params, " if size.params else ""
            of = f" (teacher {fmt.si(teacher_params)})" if teacher_params else ""
            box.update(f"{params}{size.shrink:.2f}x smaller{of}\n{size.detail}")
        else:
            box.update("size: the teacher's config.json is not available offline")
