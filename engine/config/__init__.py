"""Experiment file: TOML -> validated, typed objects.

Every user mistake becomes a `ConfigError` whose message is one line naming the file, the
key and the fix. This package imports neither torch nor transformers (the TUI uses it to
validate as the user types).

    schema.py     the sections (pydantic models) and `Experiment`
    explain.py    validation errors -> one line
    overrides.py  `--set a.b=value`
    toml_io.py    read / load / write TOML
    form_spec.py  one key's default, choices and bounds, as a form (Compose) shows them
"""

from engine.config.arch import SUPPORTED_MODEL_TYPES
from engine.config.explain import parse_experiment
from engine.config.form_spec import KeySpec, arch_default, key_spec, section_defaults
from engine.config.overrides import apply_override, parse_value
from engine.config.schema import (
    DataConfig,
    DistillConfig,
    Dtype,
    EvalConfig,
    Experiment,
    FinetuneConfig,
    LaunchConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
)
from engine.config.toml_io import dumps_toml, load_experiment, loads_experiment, read_toml
from engine.errors import ConfigError
from engine.hub_id import is_hub_id  # a model.path / model.tokenizer spelled as a hub id

__all__ = ["SUPPORTED_MODEL_TYPES", "ConfigError", "DataConfig", "DistillConfig", "Dtype", "EvalConfig", "Experiment",
           "FinetuneConfig", "KeySpec", "LaunchConfig", "ModelConfig", "PruneConfig", "TrainConfig", "apply_override",
           "arch_default", "dumps_toml", "is_hub_id", "key_spec", "load_experiment", "loads_experiment", "parse_experiment",
           "parse_value", "read_toml", "section_defaults"]
