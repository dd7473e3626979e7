"""The students' box of Compose ([[prune]]): its title, the add buttons, one StudentForm per student;
adding one (sized from the teacher when known, focused), removing one (asks first), fitting the
untouched ones to the teacher, marking the fields the messages name.

It edits the experiment's `prune` list in place and posts FormChanged("prune"): Compose marks the
form edited and re-validates, as after any field."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Button, Input, Static

from app.data.compose import Validation, is_untouched, new_student, student_targets, too_big
from app.data.field_errors import student_errors
from app.messages import FormChanged, StudentRemoved
from app.widgets.compose.student_form import StudentForm
from engine.contract import METHODS, method_or_none

# the add buttons and their keys: F2 on, one per [[prune]] method in the records' order (depth, width, search)
STUDENT_KEYS = {m.name: f"f{i}" for i, m in enumerate(METHODS, 2)}


class StudentList(Vertical):
    def __init__(self, raw: dict[str, Any], **kwargs):
        super().__init__(id="students", classes="form-section", **kwargs)
        self.raw = raw  # the experiment: its "prune" list is the students
        self.teacher: tuple[int, int, int] | None = None  # (layers, hidden, ffn), once a validation read it

    async def build(self) -> None:
        """The title and add buttons. Mounted one by one once the box is in the DOM, not as its
        constructor children (those join it only when it composes, which can come after the next
        part of the form, a student, looks for the buttons to mount itself before them)."""
        await self.mount_all([Static("Students ([[prune]])", classes="section-title"),
                              Horizontal(*(Button(f"+ {m} student ({key})", id=f"add-{m}", compact=True)
                                           for m, key in STUDENT_KEYS.items()),
                                         classes="student-buttons")])

    def mount_student(self, form: StudentForm) -> Awaitable[Any]:
        """A student's form, last in the list (before the add buttons)."""
        return self.mount(form, before=self.query_one(".student-buttons"))

    async def add(self, method: str) -> StudentForm:
        """A new student of `method`, sized from the teacher when known; its first target has the focus
        (where typing goes next)."""
        student = new_student(method, [str(p.get("name")) for p in self.raw["prune"]], self.teacher)
        self.raw["prune"].append(student)
        form = StudentForm(student)
        await self.mount_student(form)
        form.scroll_visible()
        field = next(iter(form.query(".student-targets Input")), None) or form.query(Input).first()
        field.focus(scroll_visible=False)
        self.post_message(FormChanged("prune"))
        return form

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        method = (event.button.id or "").removeprefix("add-")
        if method in STUDENT_KEYS:
            event.stop()
            await self.add(method)

    def on_student_removed(self, event: StudentRemoved) -> None:
        """A student's remove button: asks first (a removed student's settings are gone)."""
        from app.screens.confirm import ConfirmScreen

        event.stop()
        student = event.student

        async def answered(yes: bool | None) -> None:
            if yes:
                await self.remove_student(student)

        self.app.push_screen(ConfirmScreen(f"Remove student '{student.get('name', '?')}' and its settings?",
                                           yes="Remove", no="Keep"), answered)

    async def remove_student(self, student: dict) -> None:
        self.raw["prune"][:] = [p for p in self.raw["prune"] if p is not student]
        for form in self.query(StudentForm):
            if form.student is student:
                await form.remove()
        self.post_message(FormChanged("prune"))

    def show(self, v: Validation, source: str) -> None:
        """A validation's sizes under each student, or its own error (`source`: the file name the
        messages start with); the untouched students fitted to its teacher."""
        errors = {} if v.ok else student_errors([v.message, *v.more], source)
        for form in self.query(StudentForm):
            name = str(form.student.get("name"))
            form.show_size(v.students.get(name), v.teacher_params, errors.get(name, ""))
        if v.teacher_shape is not None:
            self.teacher = v.teacher_shape
            self.fit_untouched(v.teacher_shape)

    def fit_untouched(self, teacher: tuple[int, int, int]) -> None:
        """The new form's students are the 8B recipe's (keep 16 layers; ffn 9216, hidden 3072): with a
        smaller teacher they cannot work. A student still as the form made it, and too big for the
        teacher now known, is sized from it instead (through its fields, as if typed)."""
        for form in self.query(StudentForm):
            st = form.student
            m = method_or_none(st.get("method"))
            if m is None or m.halves is None or not is_untouched(st) or not too_big(st, teacher):
                continue
            wanted = {"hidden_size": None} if m.recipe_hidden else {}
            for key, value in {**wanted, **student_targets(st["method"], teacher)}.items():
                control = form.control(key)
                if control is not None:
                    control.value = "" if value is None else str(value)

    def controls_named(self, student: str, key: str) -> list[Widget]:
        """The control of `key` in the form of the student named `student` (a message's field)."""
        return [c for form in self.query(StudentForm) if str(form.student.get("name")) == student
                for c in [form.control(key)] if c is not None]
