"""What the ServerApp and the ClientApp put into Flower's records, and read back, in one place.

Arrays cross as one ``ArrayRecord`` per message (the contract's name -> numpy array, packed as one .npz); options and
descriptions as JSON strings in a ``ConfigRecord``; metrics as a ``MetricRecord``. Message types
(``<category>.<action>``) are the protocol between the two apps:

- ``query.setup``: build the client for the node's scenario (data loaded once per process); reply its
  scenario, training rows, array roles and groups (never the arrays).
- ``query.upload``: the client's initial upload of the strategy's sent roles (round 0).
- ``train``: load the arrays sent, fit one round, evaluate on valid, reply the upload + metrics.
- ``evaluate``: load the arrays sent (if any), evaluate a split, reply its metrics.
"""

from __future__ import annotations

import importlib
import io
import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

SETUP = "query.setup"
UPLOAD = "query.upload"
TRAIN = "train"
EVALUATE = "evaluate"

PACKED = "arrays.npz"

DEFAULT_CLIENT_FACTORY = "recbole_pmtrec.federated.client:make_client"
DEFAULT_STRATEGY_FACTORY = "recbole_pmtrec.federated.strategies:make_strategy"


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """The arrays as one ``.npz`` byte array under :data:`PACKED` (names, dtypes and shapes kept exactly).

    One object instead of one per array (and per chunk): Flower moves every object of a message with its own
    HTTP request at each hop (ServerApp, SuperLink, SuperNode, ClientApp), which made a round's messages of
    ~25 arrays (and a client state of ~150) cost seconds of requests on a loaded machine."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return ArrayRecord({PACKED: Array(np.frombuffer(buffer.getbuffer(), dtype=np.uint8).copy())})


def from_array_record(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    """Back to name -> array (an ArrayRecord of plain named arrays is read as it is)."""
    if record is None:
        return {}
    if list(record.keys()) != [PACKED]:
        return {name: array.numpy() for name, array in record.items()}
    with np.load(io.BytesIO(record[PACKED].numpy().tobytes()), allow_pickle=False) as packed:
        return {name: packed[name] for name in packed.files}


def to_config_record(values: dict) -> ConfigRecord:
    """Any JSON-able mapping, as one JSON string (Flower's ConfigRecord holds only flat scalars/lists)."""
    return ConfigRecord({"json": json.dumps(values, sort_keys=True)})


def from_config_record(record: ConfigRecord) -> dict:
    return json.loads(str(record["json"]))


def to_metric_record(metrics: dict[str, float]) -> MetricRecord:
    return MetricRecord({k: float(v) for k, v in metrics.items() if v is not None})


def from_metric_record(record: MetricRecord | None) -> dict[str, float]:
    return {} if record is None else {k: float(v) for k, v in record.items()}


def resolve(reference: str):
    """``package.module:attribute`` -> the attribute (the client / strategy factory a run uses)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"factory reference {reference!r} should read 'package.module:function'")
    return getattr(importlib.import_module(module_name), attribute)
