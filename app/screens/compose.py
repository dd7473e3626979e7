"""Compose: a form over the experiment schema; validated as you type (the messages of
`slimlab-engine check`); per-student size; save / open / launch detached.

The form's fields are app/widgets/compose/ (the students' box: students.py); saving, opening and
launching are app/screens/compose_files.py."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Static
from textual.worker import get_current_worker

from app.data import fmt
from app.data.compose import (
    Validation,
    experiment_path,
    new_experiment,
    validate,
)
from app.data.form_fields import DATA, DISTILL_EXTRA, EVAL, LAUNCH, MODEL, SCRATCH, TOP, TRAIN
from app.data.gpus import has_nvidia_gpu
from app.messages import FormChanged
from app.screens.compose_files import ComposeFiles
from app.screens.worker_results import while_shown
from app.textual_workarounds import InOrderInput, KeepStyles
from app.widgets.checkbox import StateCheckbox
from app.widgets.compose.fields import ARCH, FieldInput, fields
from app.widgets.compose.save_state import SaveState
from app.widgets.compose.student_form import StudentForm
from app.widgets.compose.students import STUDENT_KEYS, StudentList
from app.widgets.keybar import KeyBar
from app.widgets.nav import NavBar
from engine.contract import OPTIONAL_SECTIONS

VALIDATE_DELAY_S = 0.15  # debounce: validate once typing pauses
DISK_WATCH_S = 2.0  # how often the open file is checked for changes made elsewhere (a stat, while shown)
BUILD_GAP_S = 0.02  # between two parts of the form being mounted (a frame and pending input go first)
SECTION_TITLES = {"finetune": "Fine-tune the teacher (teacher correction)", "distill": "Distill each student",
                  "eval": "Evaluate every model (validation, test)"}


class ComposeScreen(ComposeFiles, KeepStyles, Screen):
    # nothing focused at first (Tab: the first field); Textual's default focused the save path at the
    # bottom once the form stopped being a Tab stop, and the first letters typed went into it
    AUTO_FOCUS = ""  # (None would take the app's "*")
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+o", "open", "Open"),
        Binding("ctrl+l", "launch", "Launch"),
        Binding("ctrl+n", "new", "New"),
        *(Binding(key, f"add_student('{method}')", f"+{method}") for method, key in STUDENT_KEYS.items()),
        # a text field takes letters and digits: esc leaves it, so 1-4 switch screens again
        Binding("escape", "leave_field", "Leave field"),
    ]

    def __init__(self):
        super().__init__()
        self.raw: dict[str, Any] = {}
        self.stash: dict[str, dict] = {}  # switched-off sections keep their values here
        self.path_edited = False  # the save path follows the name until edited
        self.source_text: str | None = None  # the loaded file's text: saving edits it (comments survive)
        self.disk: tuple[Path, str] | None = None  # the file and the text last read from or written to it
        self.validation: Validation | None = None
        self._timer = None
        self._build_gen = 0
        self._disk_seen: tuple[int, int] | None = None  # the file's (mtime, size) when last compared
        self.form_ready = asyncio.Event()  # every part of the form is mounted

    # ---- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield NavBar("compose")
        form = VerticalScroll(id="compose-form")
        # not a Tab stop: shift+tab from the first field landed on the form itself, where digits
        # switched screens and letters ran screen keys while it looked like typing
        form.can_focus = False
        yield form
        yield Static("", id="compose-validation", markup=False)  # as markup, "prune[depth]" lost its name
        with Horizontal(id="compose-actions"):
            yield SaveState(id="compose-save-state")
            yield InOrderInput("", id="compose-path", compact=True)
            yield Button("Save ^s", id="save", compact=True)
            yield Button("Open ^o", id="open", compact=True)
            yield Button("Launch ^l", id="launch", compact=True, variant="success")
        yield KeyBar()

    async def on_mount(self) -> None:
        self.set_interval(DISK_WATCH_S, self._watch_disk)
        await self.set_experiment(self._fresh(), None)

    def _fresh(self) -> dict[str, Any]:
        """A new experiment for this app: its runs dir; float32 on a machine without an NVIDIA GPU
        (bfloat16 there made a CPU run slow, for nothing)."""
        raw = new_experiment()
        raw["runs_dir"] = str(self.app.runs_dir)
        if not has_nvidia_gpu():
            raw["model"]["dtype"] = "float32"
        return raw

    def _form_parts(self) -> list[Callable[[], Awaitable[Any]]]:
        """The form, top to bottom, in parts that are built and mounted one event-loop turn each
        (see set_experiment): all at once, Textual's mount, layout and styling of its ~130 widgets
        held the event loop for 150-250 ms. Each student is a part of its own (~20 widgets)."""
        raw = self.raw
        form = self.query_one("#compose-form", VerticalScroll)

        def part(*make: Callable[[], Widget]) -> Callable[[], Awaitable[Any]]:
            return lambda: form.mount_all([m() for m in make])

        def student(p: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
            return lambda: self.query_one(StudentList).mount_student(StudentForm(p))

        return [
            part(lambda: _title("Experiment"), lambda: fields(TOP, raw)),  # the first show's frame: keep it small
            part(lambda: _title("Teacher"), lambda: fields(MODEL, raw), self._scratch_fields,
                 lambda: Static("", id="teacher-info", classes="field-info")),
            part(lambda: _title("Data"), lambda: fields(DATA, raw)),
            part(lambda: self._section("finetune", fields(TRAIN, self.stash["finetune"], "finetune."))),
            self._students_box,
            *(student(p) for p in raw.get("prune", [])),
            part(lambda: self._section("distill", fields(TRAIN + DISTILL_EXTRA, self.stash["distill"], "distill."))),
            part(lambda: self._section("eval", fields(EVAL, self.stash["eval"], "eval.")), lambda: _title("Launch"),
                 lambda: fields(LAUNCH, raw, id="launch-fields"),
                 lambda: _title("Plan (slimlab-engine check)"), lambda: Static("", id="compose-plan", markup=False)),
        ]

    async def _students_box(self) -> None:
        box = StudentList(self.raw)
        await self.query_one("#compose-form", VerticalScroll).mount(box)
        await box.build()

    def _scratch_fields(self) -> Widget:
        """The architecture of a fresh teacher: shown while model.init is "scratch"."""
        grid = fields(SCRATCH, self.raw, id="scratch-fields")
        grid.display = self._scratch()
        return grid

    def _scratch(self) -> bool:
        return (self.raw.get("model") or {}).get("init") == "scratch"

    def _section(self, name: str, body: Widget | None) -> Vertical:
        """An optional section: a switch, and its fields (hidden while off)."""
        on = name in self.raw
        toggle = StateCheckbox(SECTION_TITLES[name], value=on, compact=True, id=f"toggle-{name}", classes="section-head")
        if body is None:
            return Vertical(toggle, classes="form-section")
        body.id = f"body-{name}"
        body.display = on
        return Vertical(toggle, body, classes="form-section")

    async def set_experiment(self, raw: dict[str, Any], path: Path | None, source_text: str | None = None) -> None:
        """Fill the form from a raw experiment dict (new, or a loaded file and its text)."""
        self.raw = raw
        self.source_text = source_text
        for sec in OPTIONAL_SECTIONS:  # section dicts must exist for their fields
            self.stash[sec] = raw[sec] if isinstance(raw.get(sec), dict) else self.stash.get(sec, {})
        raw.setdefault("prune", [])
        self._build_gen += 1  # a build still mounting the previous experiment's parts stops
        self.form_ready.clear()
        form = self.query_one("#compose-form", VerticalScroll)
        await form.remove_children()
        first, *rest = self._form_parts()
        await first()
        self.path_edited = path is not None
        self.query_one("#compose-path", Input).value = str(path) if path else str(self._default_path())
        self._build_rest(self._build_gen, rest)

    @work(exclusive=True, group="build-form", name="build the rest of the form")
    async def _build_rest(self, gen: int, parts: list[Callable[[], Awaitable[Any]]]) -> None:
        """Mount the form's other parts, one per event-loop turn with a frame in between, then
        validate (the validation fills the plan, teacher and student lines those parts hold)."""
        for part in parts:
            await asyncio.sleep(BUILD_GAP_S)
            if gen != self._build_gen:
                return
            try:
                await part()
            except Exception:
                if gen != self._build_gen:  # the form was replaced (a file loaded) while this part mounted
                    return
                raise
        if gen == self._build_gen:
            self.form_ready.set()
            self._validate_now()

    def _default_path(self) -> Path:
        return experiment_path(str(self.raw.get("name") or "experiment"), self.app.experiments_dir)

    # ---- editing ---------------------------------------------------------------------------------
    def _edited(self) -> None:
        """Something to save: the app asks before dropping it, and the action row says so."""
        self.app.compose_dirty = True
        self.query_one(SaveState).edited()

    def on_form_changed(self, event: FormChanged) -> None:
        self._edited()
        if event.key == "name" and not self.path_edited:
            self.query_one("#compose-path", Input).value = str(self._default_path())
        if event.key == "model.init":
            for grid in self.query("#scratch-fields"):
                grid.display = self._scratch()
        if event.key.startswith(ARCH):  # another model_type (or heads): other defaults for the empty fields
            for field in self.query("#scratch-fields FieldInput").results(FieldInput):
                field.refresh_hint()
        self._schedule_validation()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "compose-path":
            self.path_edited = event.value != str(self._default_path())
            self.query_one(SaveState).edited()  # saved, but to another file

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        cid = event.checkbox.id or ""
        if not cid.startswith("toggle-"):
            return
        sec = cid.removeprefix("toggle-")
        self._edited()
        if event.value:
            self.raw[sec] = self.stash[sec]
        else:
            self.raw.pop(sec, None)
        for body in self.query(f"#body-{sec}"):
            body.display = event.value
        self._schedule_validation()

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        bid = event.button.id
        if bid == "save":
            self.action_save()
        elif bid == "open":
            await self.action_open()
        elif bid == "launch":
            self.action_launch()

    async def action_add_student(self, method: str) -> None:
        await self.form_ready.wait()
        await self.query_one(StudentList).add(method)

    def action_leave_field(self) -> None:
        self.set_focus(None)

    # ---- validation (thread worker: the plan may read the teacher's config.json) --------------
    def _schedule_validation(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(VALIDATE_DELAY_S, self._validate_now)

    def _validate_now(self) -> None:
        self._validate(copy.deepcopy(self.raw), self.query_one("#compose-path", Input).value.strip())

    @work(thread=True, exclusive=True, group="validate", name="validate experiment")
    def _validate(self, raw: dict[str, Any], source: str) -> None:
        result = validate(raw, source or "experiment")
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_validation, result)

    @while_shown
    def _show_validation(self, v: Validation) -> None:
        self.validation = v
        box = self.query_one("#compose-validation", Static)
        box.set_class(v.ok, "-ok")
        box.set_class(not v.ok, "-error")
        from app.data.field_errors import error_field

        source = self.query_one("#compose-path", Input).value.strip() or "experiment"  # as _validate names it
        also = [where for m in v.more if (where := error_field(m, source)) is not None]
        box.update(("✓ " if v.ok else "✗ ") + v.message
                   + (f"\n  also: {', '.join(f'prune[{s}].{k}' if s else k for s, k in also)}" if also else ""))
        plan = self.query("#compose-plan")
        if plan:
            plan.first(Static).update("\n".join(v.plan))
        info = self.query("#teacher-info")
        if info:
            text = f"{fmt.si(v.teacher_params)} params: {v.teacher_detail}" if v.teacher_detail else \
                "(student sizes appear when the teacher's config.json is on disk)"
            info.first(Static).update(text + (f"\n{v.teacher_source}" if v.teacher_source else ""))
        for students in self.query(StudentList):
            students.show(v, source)
        self._mark_invalid(v)

    def _mark_invalid(self, v: Validation) -> None:
        """The fields the messages are about (the first error, and every other student's own) get the
        `-bad-field` look until fixed: a key in the line below the form was hard to find among 40
        fields and 3 students."""
        from app.data.field_errors import error_field

        source = self.query_one("#compose-path", Input).value.strip() or "experiment"  # as _validate names it
        named = [] if v.ok else [error_field(m, source) for m in (v.message, *v.more)]
        targets: list[Widget] = []
        for student, key in (w for w in named if w is not None):
            if student is None:  # the form's own fields: their ids are f-<key> (fields.control)
                targets += list(self.query("#f-" + key.replace(".", "-").replace("_", "-")))[:1]
            else:
                targets += [c for box in self.query(StudentList) for c in box.controls_named(student, key)]
        for w in self.query(".-bad-field"):
            if w not in targets:
                w.remove_class("-bad-field")
        for w in targets:
            w.add_class("-bad-field")

def _title(text: str) -> Static:
    return Static(text, classes="section-title")
