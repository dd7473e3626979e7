"""The run directory: the contract between the engine (writer) and the TUI/CLI (readers).

    runs/<name>/experiment.toml, status.json, <stage>/{status.json, metrics.jsonl, stdout.log,
    checkpoints/, model/, importance.json}

JSON documents are written atomically (temp file + rename); metrics are append-only.
Readers tolerate a half-written last line and a stage that died without saying so.
No torch import here: the TUI reads run directories through this module.
"""

from engine.contract.compare_cells import AT_CHANCE, decide_columns, quality_speed_points, row_cells
from engine.contract.compare_rows import ModelRow, read_model_rows
from engine.contract.files import (
    append_metrics,
    now_iso,
    parse_iso,
    read_json,
    read_metrics,
    truncate_metrics_after,
    write_atomic,
    write_json,
    write_json_or_warn,
)
from engine.contract.fmt import GIB, age, duration, human_count
from engine.contract.layout import RunLayout, list_runs, teacher_source, tokenizer_source
from engine.contract.metrics_reader import (
    Change,
    MetricsCursor,
    last_record_before,
    parse_record,
    read_records,
)
from engine.contract.metrics_summary import MetricsSummary, read_metrics_summary, stat_key
from engine.contract.results import (
    MAX_LOG_PPL,
    ModelResult,
    SplitResult,
    perplexity,
    read_results,
    split_entry,
)
from engine.contract.scan import RunInfo, RunScanner, StageInfo
from engine.contract.search_doc import Candidate, Frontier, SearchDoc, read_search_doc, search_doc
from engine.contract.status import (
    HEARTBEAT_S,
    STALE_S,
    STATES,
    StageStatus,
    effective_state,
    pid_alive,
    process_alive,
    process_of,
    read_status,
    stage_status_doc,
)
from engine.errors import UserError  # what a reader catches: a file it cannot use (UnreadableFile, ...)
from engine.stages import (  # the stage kinds' and prune methods' facts, for readers (the TUI imports only the contract)
    DISTILL,
    KINDS,
    METHODS,
    OPTIONAL_SECTIONS,
    PRUNE,
    STUDENT_SECTIONS,
    WIDTH,
    PruneMethod,
    is_student_stage,
    kind_of,
    kind_or_none,
    method_or_none,
    planned_stages,
    stage_kind,
    student_or_none,
    student_sections,
)

__all__ = [
    "AT_CHANCE", "ModelRow", "decide_columns", "quality_speed_points", "read_model_rows", "row_cells",
    "Candidate", "Frontier", "SearchDoc", "read_search_doc", "search_doc",
    "Change", "DISTILL", "GIB", "HEARTBEAT_S", "KINDS", "METHODS", "method_or_none", "OPTIONAL_SECTIONS", "PRUNE",
    "PruneMethod", "STUDENT_SECTIONS", "WIDTH",
    "is_student_stage", "kind_of", "kind_or_none", "planned_stages", "stage_kind",
    "student_or_none", "student_sections", "MAX_LOG_PPL", "MetricsCursor", "MetricsSummary", "ModelResult", "RunInfo",
    "RunLayout", "RunScanner", "STALE_S", "STATES", "SplitResult", "StageInfo", "StageStatus", "UserError", "age",
    "append_metrics", "duration", "effective_state", "human_count", "last_record_before", "list_runs", "now_iso",
    "parse_iso", "parse_record", "perplexity", "pid_alive", "process_alive", "process_of", "read_json",
    "read_metrics", "read_metrics_summary", "read_records", "read_results", "read_status", "split_entry",
    "stage_status_doc", "stat_key", "teacher_source", "tokenizer_source", "truncate_metrics_after",
    "write_atomic", "write_json", "write_json_or_warn",
]
