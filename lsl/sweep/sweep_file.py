"""The sweep file: reading and checking it, and turning its grid into axes of labelled values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lsl.errors import ConfigError
from lsl.files import read_yaml
from lsl.sweep.fit_sections import config_sections
from lsl.sweep.schema import Stage, Sweep

SWEEP_KEYS = {"name", "config", "overrides", "stages", "grid"}
STAGE_KEYS = {"config", "overrides", "teacher", "sweep"}


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every mistake is a ConfigError naming the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    spec = read_yaml(path, "sweep file")
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file {str(path)!r} must be a mapping with 'grid' and 'config' or 'stages'")
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"sweep file {str(path)!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"sweep name {name!r} must use only letters, digits, '.', '_' and '-' (it names a folder)")
    common = _dotted_mapping(spec.get("overrides") or {}, "overrides")
    stages = _stages(spec, path, common)
    axes = _axes(spec.get("grid"), {stage.name for stage in stages if stage.name})
    return Sweep(name, path, stages, axes)


def _stages(spec: dict, path: Path, common: dict[str, Any]) -> list[Stage]:
    folder = path.parent
    if ("config" in spec) == ("stages" in spec):
        raise ConfigError("a sweep file needs exactly one of 'config' (one base config) or 'stages' "
                          "(a base config per stage)")
    if "config" in spec:
        return [Stage("", _base_config(spec["config"], folder, "config"), dict(common))]
    if not isinstance(spec["stages"], dict) or not spec["stages"]:
        raise ConfigError("'stages' must map stage names to {config: ..., teacher: ...}")
    stages = []
    for name, stage_spec in spec["stages"].items():
        where = f"stages.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) or name in config_sections():
            raise ConfigError(f"stage name {name!r} must be a plain word (letters, digits, '_', '-') and not one of "
                              f"the config's sections {sorted(config_sections())}")
        if not isinstance(stage_spec, dict) or ("config" in stage_spec) == ("sweep" in stage_spec):
            raise ConfigError(f"{where} must be a mapping with a 'config' (its base config) or a 'sweep' (another "
                              "sweep file, whose finished runs it takes)")
        unknown = set(stage_spec) - STAGE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(STAGE_KEYS)}")
        if "sweep" in stage_spec:
            stages.append(_borrowed_stage(str(name), stage_spec, path))
            continue
        teacher = stage_spec.get("teacher")
        if teacher is not None and teacher not in [stage.name for stage in stages]:
            raise ConfigError(f"{where}.teacher={teacher!r} is not an earlier stage: list the teacher's stage first")
        overrides = dict(common)
        overrides.update(_dotted_mapping(stage_spec.get("overrides") or {}, f"{where}.overrides"))
        stages.append(Stage(str(name), _base_config(stage_spec["config"], folder, f"{where}.config"), overrides, teacher))
    return stages


def _borrowed_stage(name: str, stage_spec: dict, path: Path) -> Stage:
    """A stage that takes its runs from another sweep file (see ``Stage.source``): that sweep's base config and
    overrides, none of this file's."""
    where = f"stages.{name}"
    extra = set(stage_spec) - {"sweep"}
    if extra:
        raise ConfigError(f"{where}: a stage with 'sweep' takes that sweep's config, overrides and runs as they are; "
                          f"remove {sorted(extra)}")
    source_path = (path.parent / str(stage_spec["sweep"])).resolve()
    if source_path == path.resolve():
        raise ConfigError(f"{where}.sweep={stage_spec['sweep']!r} is this sweep file: name another sweep")
    # Read before loading: only a single-config sweep can lend its runs, and loading only such a file cannot
    # come back here (no cycle of sweep files).
    lender = read_yaml(source_path, "sweep file") if source_path.is_file() else {}
    if not (isinstance(lender, dict) and isinstance(lender.get("config", ""), str) and "stages" not in lender):
        raise ConfigError(f"{where}.sweep={stage_spec['sweep']!r}: only a sweep with one base config ('config', "
                          "not 'stages') can lend its runs")
    try:
        source = load_sweep(source_path)
    except ConfigError as error:
        raise ConfigError(f"{where}.sweep={stage_spec['sweep']!r}: {error}") from None
    [stage] = source.stages
    return Stage(name, stage.config, dict(stage.overrides), None, source)


def _base_config(value: Any, folder: Path, where: str) -> Path:
    path = (folder / str(value)).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}={value!r}: {str(path)!r} does not exist (paths are relative to the sweep file)")
    return path


def _dotted_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must map dotted config keys (like trainer.max_epochs) to values")
    return {str(key): item for key, item in value.items()}


def _axes(grid: Any, stage_names: set[str]) -> dict[str, list[tuple[str, Any]]]:
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise ConfigError("'grid' must map dotted config keys to lists of values (or to mappings label -> value)")
    axes = {}
    for key, values in grid.items():
        key = str(key)
        if key.partition(".")[0] not in config_sections() | stage_names:
            raise ConfigError(f"grid key {key!r} is neither a config key (one of {sorted(config_sections())}, dotted) "
                              f"nor scoped to a stage ({sorted(stage_names) or 'the sweep has none'})")
        if isinstance(values, dict):
            pairs = [(_safe_label(str(label), key), value) for label, value in values.items()]
        elif isinstance(values, list):
            pairs = [(_label(value), value) for value in values]
        else:
            raise ConfigError(f"grid key {key!r} needs a list of values or a mapping label -> value, got {values!r}")
        if not pairs:
            raise ConfigError(f"grid key {key!r} has no values: give at least one or remove it")
        labels = [label for label, _ in pairs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"grid key {key!r}: the values {labels} do not have distinct labels; "
                              "write them as a mapping label -> value")
        axes[key] = pairs
    return axes


def _label(value: Any) -> str:
    """A folder-safe label: ``0.2`` -> ``0.2``; ``{class_path: lsl.losses.LabelSmoothing, init_args: {alpha: 0.1}}``
    -> ``LabelSmoothing-alpha0.1``."""
    if isinstance(value, dict) and "class_path" in value:
        text = str(value["class_path"]).rsplit(".", 1)[-1]
        text += "".join(f"-{name}{item}" for name, item in (value.get("init_args") or {}).items())
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "empty"


def _safe_label(label: str, key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.+-]+", label):
        raise ConfigError(f"grid key {key!r}: label {label!r} names a folder: use letters, digits, '.', '+' and '-'")
    return label


def sweep_as_file(sweep: Sweep) -> dict[str, Any]:
    """The sweep as a sweep file that loads back to the same runs: base configs as absolute paths, the common
    overrides folded into each stage's, every grid axis as a mapping label -> value."""
    grid = {key: dict(pairs) for key, pairs in sweep.axes.items()}
    if len(sweep.stages) == 1 and sweep.stages[0].name == "":
        [stage] = sweep.stages
        return {"name": sweep.name, "config": str(stage.config), "overrides": dict(stage.overrides), "grid": grid}
    stages = {stage.name: {"sweep": str(stage.source.path.absolute())} if stage.source is not None else
              {"config": str(stage.config), "overrides": dict(stage.overrides),
               **({"teacher": stage.teacher} if stage.teacher else {})} for stage in sweep.stages}
    return {"name": sweep.name, "stages": stages, "grid": grid}
