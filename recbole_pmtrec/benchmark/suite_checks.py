"""Checks of a suite file's sections (``load_suite``): each error names the file and the key."""

from __future__ import annotations

from recbole_pmtrec.benchmark.methods import is_mtl_method, method_spec, mtl_methods
from recbole_pmtrec.validation import check_value


def check_method(where: str, key: str, method) -> None:
    """A suite's method: an mtl_method of PMTRec or a model name; the error names the file and the key."""
    if isinstance(method, str) and is_mtl_method(method):
        return
    try:
        if not isinstance(method, str):
            raise ValueError(f"a method is a name, got {method!r}")
        method_spec(method)
    except ValueError:
        raise ValueError(
            f"{where}: {key}: unknown method {method!r}; a method is an mtl_method of PMTRec "
            f"({', '.join(mtl_methods())}) or a model name (BPR, LightGCN, ...: any RecBole or plugin model)"
        ) from None


def check_methods(where: str, key: str, methods) -> list:
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"{where}: {key} must be a non-empty list of methods, got {methods!r}")
    for method in methods:
        check_method(where, key, method)
    return methods


def check_grid(where: str, key: str, grid) -> None:
    """``{knob: [values]}`` (each a non-empty list, each plugin knob's value allowed: validation.py), or a
    non-empty list of such sub-grids, run one after the other (``grid_points``)."""
    if isinstance(grid, list) and grid:
        for number, part in enumerate(grid):
            if not isinstance(part, dict) or not part:
                raise ValueError(
                    f"{where}: {key}[{number}] must be a mapping knob -> list of values, got {part!r}"
                )
            check_grid(where, f"{key}[{number}]", part)
        return
    if not isinstance(grid, dict):
        raise ValueError(
            f"{where}: {key} must be a mapping knob -> list of values (or a list of such mappings), got {grid!r}"
        )
    for knob, values in grid.items():
        check_values(where, f"{key}.{knob}", knob, values)


def check_values(where: str, label: str, knob: str, values) -> None:
    """A sweep of ``knob`` at ``label``: a non-empty list whose every value is allowed (validation.py)."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {label} must be a non-empty list of values, got {values!r}")
    for value in values:
        problem = check_value(knob, value)
        if problem:
            raise ValueError(f"{where}: {label}: {problem}")


def check_config(where: str, key: str, config) -> None:
    if not isinstance(config, dict):
        raise ValueError(f"{where}: {key} must be a mapping of RecBole parameters, got {config!r}")
    for knob, value in config.items():
        problem = check_value(knob, value)
        if problem:
            raise ValueError(f"{where}: {key}.{knob}: {problem}")


SENSITIVITY_KNOBS = ("pmtrec_alpha", "pmtrec_tau")


def check_sensitivity(where: str, sensitivity: dict) -> None:
    """``datasets``: a list (empty: no sweep); each sweep given: a non-empty list of allowed values (a scalar
    or an empty sweep is refused); datasets to sweep need at least one sweep."""
    unknown = [k for k in sensitivity if k not in ("datasets", *SENSITIVITY_KNOBS)]
    if unknown:
        raise ValueError(
            f"{where}: sensitivity.{unknown[0]}: unknown key; the section has datasets, "
            + ", ".join(SENSITIVITY_KNOBS)
        )
    listed = sensitivity.get("datasets", [])
    if not isinstance(listed, list):
        raise ValueError(f"{where}: sensitivity.datasets must be a list of datasets, got {listed!r}")
    for key in SENSITIVITY_KNOBS:
        if key not in sensitivity:
            continue
        check_values(where, f"sensitivity.{key}", key, sensitivity[key])
    if listed and not any(key in sensitivity for key in SENSITIVITY_KNOBS):
        raise ValueError(
            f"{where}: sensitivity: datasets {listed} but no sweep; give {' or '.join(SENSITIVITY_KNOBS)}"
        )
