"""Checkpoints are data, never code: tensors, numbers, strings, lists, dicts.

A RecBole 1.2.1 checkpoint pickles the run's ``Config`` object. Unpickling can *call* any class the loader
allows with arguments taken from the file, and RecBole's ``Config`` runs ``eval()`` on the string values of
its ``config_dict``: a file that builds ``Config("BPR", "ml-100k", None, {"epochs": "<expression>"})``
anywhere inside it runs that expression on load. So this module:

- saves the config as a plain dict of primitives (:func:`config_to_data`; the model class by name) and
  refuses to save anything that is not data (:func:`to_data` names the offending key);
- loads with ``torch.load(weights_only=True)`` and **no** extra allow-listed globals: only what torch's
  weights-only unpickler allows by itself (tensor and storage rebuilding, ``OrderedDict``, ``torch.Size``,
  dtypes, devices: constructors that build values and run nothing they are handed). Every loading path
  (``load_data_and_model``, ``Trainer.resume_checkpoint``, ``Trainer.evaluate(load_best_model=True)``,
  the multi-task trainers, the benchmark and tuning, which go through these) calls :func:`load_checkpoint`;
- rebuilds the ``Config`` from the stored dict with RecBole's string ``eval()`` and command-line parsing
  switched off for that one object (:func:`config_from_data`): the values are already typed, and a string
  in a file stays a string;
- refuses RecBole-native checkpoints (a pickled ``Config``) with a message naming the file and the command
  that converts one you made yourself (:func:`convert_trusted_checkpoint`, an explicit opt-in).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "recbole_pmtrec-checkpoint/1"
_PROTOCOL = 2  # torch's weights-only unpickler rejects protocol-4 frames

# Set by RecBole's Config from the other keys (model class, metrics, devices, process rank): never stored,
# recomputed on load (a checkpoint from a multi-process run loads in one process).
DERIVED_KEYS = ("MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank")

_CONVERT_HINT = (
    "If you made this file yourself and trust it, convert it once into a data-only checkpoint:\n"
    "    python -m recbole_pmtrec.checkpoint convert --trust-checkpoint {file} {file}.data.pth\n"
    "(--trust-checkpoint unpickles the file with every safety off: anyone who could write the file can "
    "run code on your machine through it.)"
)


class CheckpointError(ValueError):
    """A file that is not a loadable, data-only recbole_pmtrec checkpoint; the message names the file."""


# ------------------------------------------------------------------------------------------------- saving


def to_data(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as tensors, numbers, strings, bools, None, lists, tuples and dicts with string keys.

    numpy arrays become tensors and numpy scalars Python numbers; anything else (an object, a class, a
    function) is a ``TypeError`` naming its key path, raised at save time rather than at load time.
    """
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass that pickles as numpy
        return value.item()
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor | torch.dtype):
        return value
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}, not a string or int")
            out[key] = to_data(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        items = [to_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise TypeError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} is not data; a checkpoint holds "
        "tensors, numbers, strings, lists and dicts only"
    )


def config_to_data(config) -> dict:
    """A RecBole ``Config`` as a plain dict of primitives (its final values; derived keys left out)."""
    values = {k: v for k, v in config.final_config_dict.items() if k not in DERIVED_KEYS}
    return to_data(values, "config")


def checkpoint_data(state: dict) -> dict:
    """A trainer's checkpoint dict as data: the ``Config`` replaced by :func:`config_to_data`."""
    from recbole.config import Config as RecBoleConfig

    state = dict(state)
    if isinstance(state.get("config"), RecBoleConfig):
        state["config"] = config_to_data(state["config"])
    state["format"] = FORMAT
    return to_data(state)


def save_checkpoint(state: dict, file, **kwargs) -> None:
    """Save a trainer checkpoint as data (see :func:`checkpoint_data`) with a protocol the loader reads."""
    kwargs["pickle_protocol"] = _PROTOCOL
    torch.save(checkpoint_data(state), file, **kwargs)


# ------------------------------------------------------------------------------------------------ loading


def _describe(file) -> str:
    return str(file) if not isinstance(file, io.IOBase) else "<stream>"


def load_checkpoint(file, map_location=None, **kwargs) -> dict:
    """Load a data-only checkpoint with ``weights_only=True`` and no extra allow-listed globals.

    Raises :class:`CheckpointError` (naming the file) for a missing, empty, truncated or foreign file, for
    a pickle that would call anything, and for a RecBole-native checkpoint (with the conversion command).
    """
    kwargs.pop("weights_only", None)
    name = _describe(file)
    if isinstance(file, str | Path):
        path = Path(file)
        if not path.is_file():
            raise CheckpointError(f"{name}: no such checkpoint file")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{name}: the checkpoint file is empty")
    try:
        checkpoint = torch.load(file, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        text = str(err)
        if _pickles_a_config(file):
            raise CheckpointError(
                f"{name}: refused: this is a RecBole-native checkpoint; it pickles a Config object, and "
                "loading one can run code written into the file.\n" + _CONVERT_HINT.format(file=name)
            ) from None
        raise CheckpointError(
            f"{name}: refused: the file's pickle asks to call or build something that is not data "
            f"({_first_line(text)}). A recbole_pmtrec checkpoint holds tensors, numbers, strings, lists and "
            "dicts only."
        ) from None
    except Exception as err:  # garbage makes the unpickler fail in many ways (EOFError, IndexError, ...)
        raise CheckpointError(
            f"{name}: not a readable checkpoint (truncated, corrupted or another kind of file): "
            f"{type(err).__name__}: {_first_line(str(err))}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{name}: not a recbole_pmtrec checkpoint (expected config and state_dict; found {found})"
        )
    if not isinstance(checkpoint["config"], dict):
        raise CheckpointError(f"{name}: the checkpoint's config is not a dict of values")
    return checkpoint


def load_model_weights(trainer, model_file=None) -> str:
    """Load the weights of ``model_file`` (default: the trainer's best checkpoint) into ``trainer.model``, as
    RecBole's ``evaluate(load_best_model=True)`` does, through :func:`load_checkpoint`; returns the file."""
    checkpoint_file = model_file or trainer.saved_model_file
    checkpoint = load_checkpoint(checkpoint_file, map_location=trainer.device)
    trainer.model.load_state_dict(checkpoint["state_dict"])
    trainer.model.load_other_parameter(checkpoint.get("other_parameter"))
    trainer.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
    return checkpoint_file


def _pickles_a_config(file) -> bool:
    """Whether the file's pickle names a RecBole ``Config`` class (read as bytes, nothing unpickled)."""
    try:
        with zipfile.ZipFile(file) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            data = archive.read(pickles[0]) if pickles else b""
    except (OSError, zipfile.BadZipFile, TypeError):
        return False
    finally:
        if hasattr(file, "seek"):
            file.seek(0)
    return b"Config" in data and (b"recbole.config" in data or b"recbole_pmtrec.config" in data)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def config_from_data(data: dict):
    """Rebuild the plugin ``Config`` from :func:`config_to_data`'s dict without evaluating any string.

    RecBole's ``Config`` ``eval()``s string values of a ``config_dict`` and parses ``sys.argv``; here both
    are off for this one object, so the stored values are taken as they are.
    """
    from recbole_pmtrec.config import Config

    if not isinstance(data.get("model"), str) or not isinstance(data.get("dataset"), str):
        raise CheckpointError("the checkpoint's config names no model / dataset")

    class StoredConfig(Config):
        def _convert_config_dict(self, config_dict):
            return config_dict

        def _load_cmd_line(self):
            return {}

    values = {k: v for k, v in data.items() if k not in DERIVED_KEYS}
    path = values.get("data_path")
    if isinstance(path, str) and os.path.basename(os.path.normpath(path)) == data["dataset"]:
        # RecBole's Config appends the dataset's name to data_path: give it back the folder above
        values["data_path"] = os.path.dirname(os.path.normpath(path))
    config = StoredConfig(model=data["model"], dataset=data["dataset"], config_dict=values)
    config.__class__ = Config  # the rebuilt object behaves as any other Config from here on
    return config


# ----------------------------------------------------------------------------------- explicit conversion


def convert_trusted_checkpoint(source, target, *, trust_checkpoint: bool = False) -> Path:
    """Rewrite a RecBole-native (or older recbole_pmtrec) checkpoint as a data-only one.

    ``trust_checkpoint=True`` is required: the source is unpickled with ``weights_only=False``, which runs
    whatever the file says. Only do it for files you made yourself.
    """
    if not trust_checkpoint:
        raise PermissionError(
            f"{source}: converting unpickles the file with every safety off; pass trust_checkpoint=True "
            "(--trust-checkpoint) only for a file you made yourself"
        )
    state = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "state_dict" not in state or "config" not in state:
        raise CheckpointError(f"{source}: not a RecBole checkpoint (expected config and state_dict)")
    save_checkpoint(state, target)
    load_checkpoint(target)  # the result must load safely
    return Path(target)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_pmtrec.checkpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="rewrite a RecBole-native checkpoint as a data-only one")
    convert.add_argument("source")
    convert.add_argument("target")
    convert.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="required: the source is unpickled with every safety off, so a file written by someone else "
        "can run code on this machine. Use only for files you made yourself.",
    )
    args = parser.parse_args(argv)
    try:
        out = convert_trusted_checkpoint(args.source, args.target, trust_checkpoint=args.trust_checkpoint)
    except (PermissionError, CheckpointError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {out} (data only; loads with recbole_pmtrec's safe loader)")


if __name__ == "__main__":
    import recbole_pmtrec  # noqa: F401  (the compatibility shims, before RecBole's Config is used)

    main()
