"""Checks of the plugin's own config keys, run by :class:`recbole_pmtrec.config.Config` as soon as the config
files, config dict and command line are merged: before any dataset is read or model built.

Each error names the key, the value it got and what is allowed. RecBole's own keys are left to RecBole.

- ``mtl_method``: a registered combiner (``recbole_pmtrec.trainer.combiners.COMBINERS``); case-insensitive,
  as the trainer reads it.
- ``pmtrec_alpha``: a finite number >= 1. Task Focusing multiplies the main task's row norm by alpha^s
  (s = epoch + 1, so s = 1 in RecBole's epoch 0); alpha < 1 would hand the rows away from the main task
  epoch by epoch, the opposite of the paper's rule (its grid is 1.00-1.20; 1 switches focusing off).
- ``pmtrec_tau``: a finite number > 0 (the softmax temperature of Gradient Magnitude Balancing; 0 divides
  by zero, a negative temperature favours the weakest task).
- ``aux_anchors``: ``sampled`` or ``batch`` (how the auxiliary tasks' anchors are chosen: data/sampler.py).
- ``encoder``: one of PMTRec's encoders (``recbole_pmtrec.model.encoders.ENCODERS``), checked only for
  models that build one (PMTRec and its subclasses): RecBole's own models may use ``encoder`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping


class ConfigError(ValueError):
    """A config value the plugin cannot run with; raised before any data is loaded."""


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mtl_methods() -> list[str]:
    from recbole_pmtrec.trainer.combiners import COMBINERS

    return sorted(COMBINERS)


def _encoders() -> list[str]:
    import recbole_pmtrec.model  # noqa: F401  (registers the graph encoders)
    from recbole_pmtrec.model.encoders import ENCODERS

    return sorted(ENCODERS)


def _check_mtl_method(value) -> str | None:
    methods = _mtl_methods()
    if isinstance(value, str) and value.lower() in methods:
        return None
    return f"one of {', '.join(methods)}"


def _check_alpha(value) -> str | None:
    number = _number(value)
    if number is not None and number >= 1:
        return None
    return (
        "a number >= 1 (Task Focusing scales the main task by alpha^s with s = epoch + 1; 1 = no focusing, "
        "the paper's grid is 1.00-1.20)"
    )


def _check_tau(value) -> str | None:
    number = _number(value)
    if number is not None and number > 0:
        return None
    return "a number > 0 (the temperature of Gradient Magnitude Balancing; e.g. 1e-4, 1 = no balancing)"


def _check_encoder(value) -> str | None:
    encoders = _encoders()
    if isinstance(value, str) and value.lower() in encoders:
        return None
    return f"one of {', '.join(encoders)}"


def _check_aux_anchors(value) -> str | None:
    from recbole_pmtrec.data.dataset import AUX_ANCHORS

    if value in AUX_ANCHORS:
        return None
    return (
        f"one of {', '.join(AUX_ANCHORS)} (anchors drawn per auxiliary batch, or the interaction batch's ids)"
    )


CHECKS: dict[str, Callable[[object], str | None]] = {
    "aux_anchors": _check_aux_anchors,
    "mtl_method": _check_mtl_method,
    "pmtrec_alpha": _check_alpha,
    "pmtrec_tau": _check_tau,
    "encoder": _check_encoder,
}
"""Key -> check; a check returns None when the value is allowed, else a description of what is."""


def check_value(key: str, value) -> str | None:
    """The error message for ``key: value``, or None when it is allowed (or the key is not checked here)."""
    check = CHECKS.get(key)
    if check is None or value is None:
        return None
    allowed = check(value)
    if allowed is None:
        return None
    return f"config key '{key}' has the value {value!r}; allowed: {allowed}"


def _builds_encoder(model_class) -> bool:
    if model_class is None:
        return True
    from recbole_pmtrec.model.pmtrec import PMTRec

    return isinstance(model_class, type) and issubclass(model_class, PMTRec)


def validate(config: Mapping, model_class: type | None = None) -> None:
    """Raise :class:`ConfigError` for the first invalid plugin key of ``config`` (a dict or a Config).

    ``model_class``: the model the config is for; ``encoder`` is checked only when it builds one (when None,
    always). A key that is absent or None is left alone: the code that reads it supplies the default."""
    for key in CHECKS:
        if key == "encoder" and not _builds_encoder(model_class):
            continue
        try:
            value = config[key]
        except KeyError:
            continue
        message = check_value(key, value)
        if message is not None:
            model = getattr(model_class, "__name__", None)
            raise ConfigError(message + (f" (model {model})" if model else ""))
