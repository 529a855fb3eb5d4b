"""What a federated run produced, the same for both runtimes (``simulate.py`` and the Flower ServerApp).

A :class:`RunRecord` holds, per round, every client's fit metrics and valid metrics and the round's wall time
split into local training, evaluation, server aggregation and the rest (the runtime's overhead: message
passing, serialization, process start-up); at the end, the test metrics per scenario and task. It saves to
and loads from JSON and prints a markdown summary (per scenario and per task AUC / LogLoss, mean over
scenarios).

Timing convention: ``train_seconds`` / ``eval_seconds`` are the round's *critical path* of client work, i.e.
the sum over clients when the runtime runs them one after another (``simulate.py``) and the maximum when
they run concurrently (Flower, one SuperNode per scenario); :func:`critical_path` computes either.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

Metrics = dict[str, float]


def critical_path(seconds: list[float], concurrent: bool) -> float:
    """The wall time a set of client jobs takes: their sum run one after another, their maximum run at once."""
    if not seconds:
        return 0.0
    return float(max(seconds) if concurrent else sum(seconds))


@dataclass
class RoundRecord:
    """One communication round. ``fit`` / ``valid``: client id (scenario) -> metrics."""

    server_round: int
    fit: dict[str, Metrics] = field(default_factory=dict)
    valid: dict[str, Metrics] = field(default_factory=dict)
    wall_seconds: float = 0.0
    train_seconds: float = 0.0  # local training on the round's critical path
    eval_seconds: float = 0.0  # evaluation on the round's critical path
    aggregate_seconds: float = 0.0  # the strategy's aggregate() on the server

    @property
    def overhead_seconds(self) -> float:
        """The rest of the round: what the runtime itself costs (wall - training - evaluation - aggregation)."""
        return max(0.0, self.wall_seconds - self.train_seconds - self.eval_seconds - self.aggregate_seconds)

    @property
    def overhead_share(self) -> float:
        """The runtime's share of the round's wall time (the issue's target for Flower: <= 0.25)."""
        return self.overhead_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


def metric_names(metrics_by_client: dict[str, Metrics], metric: str) -> list[str]:
    """The tasks that have ``<metric>@<task>`` in any client's metrics, sorted."""
    prefix = f"{metric}@"
    return sorted(
        {key[len(prefix) :] for m in metrics_by_client.values() for key in m if key.startswith(prefix)}
    )


def mean_over_scenarios(metrics_by_client: dict[str, Metrics], key: str) -> float:
    """Unweighted mean of ``key`` over the scenarios that report it (NaN when none does)."""
    values = [m[key] for m in metrics_by_client.values() if key in m and m[key] is not None]
    return float(sum(values) / len(values)) if values else math.nan


def mean_metric(metrics_by_client: dict[str, Metrics], metric: str) -> float:
    """Mean over tasks of the mean over scenarios of ``<metric>@<task>``."""
    per_task = [
        mean_over_scenarios(metrics_by_client, f"{metric}@{t}")
        for t in metric_names(metrics_by_client, metric)
    ]
    per_task = [v for v in per_task if not math.isnan(v)]
    return float(sum(per_task) / len(per_task)) if per_task else math.nan


@dataclass
class RunRecord:
    """One federated run: what was run, every round, and the final test metrics."""

    strategy: str
    seed: int
    runtime: str  # "simulate" or "flower"
    scenarios: list[str]
    config: dict = field(default_factory=dict)  # the federated config as run (JSON-able)
    rounds: list[RoundRecord] = field(default_factory=list)
    test: dict[str, Metrics] = field(default_factory=dict)  # scenario -> test metrics
    test_round: int | None = None  # the round whose state was tested
    test_from: str = "last"  # "best" (best valid round) or "last"

    # ---- building -------------------------------------------------------------------------------------
    def add_round(self, record: RoundRecord) -> RoundRecord:
        self.rounds.append(record)
        return record

    def round(self, server_round: int) -> RoundRecord:
        for record in self.rounds:
            if record.server_round == server_round:
                return record
        raise KeyError(
            f"round {server_round} not in this record (rounds: {[r.server_round for r in self.rounds]})"
        )

    # ---- reading --------------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        source = self.test or (self.rounds[-1].valid if self.rounds else {})
        return metric_names(source, "auc")

    def valid_curve(self, metric: str = "auc") -> list[tuple[int, float]]:
        """(round, mean over scenarios and tasks of the valid ``metric``) per round: the per-round plot."""
        return [(r.server_round, mean_metric(r.valid, metric)) for r in self.rounds if r.valid]

    def best_round(self, metric: str = "auc") -> int | None:
        """The round with the best mean valid ``metric`` (higher is better, lower for ``logloss``); the first
        such round on ties; None when no round has valid metrics."""
        curve = [(rnd, value) for rnd, value in self.valid_curve(metric) if not math.isnan(value)]
        if not curve:
            return None
        sign = -1.0 if metric == "logloss" else 1.0
        return max(curve, key=lambda item: (sign * item[1], -item[0]))[0]

    def timing(self) -> dict[str, float]:
        """Wall time summed over rounds, split into training / evaluation / aggregation / overhead."""
        total = {
            "wall_seconds": sum(r.wall_seconds for r in self.rounds),
            "train_seconds": sum(r.train_seconds for r in self.rounds),
            "eval_seconds": sum(r.eval_seconds for r in self.rounds),
            "aggregate_seconds": sum(r.aggregate_seconds for r in self.rounds),
            "overhead_seconds": sum(r.overhead_seconds for r in self.rounds),
        }
        total["overhead_share"] = (
            total["overhead_seconds"] / total["wall_seconds"] if total["wall_seconds"] else 0.0
        )
        return total

    # ---- JSON -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        data = dict(data)
        data["rounds"] = [RoundRecord(**r) for r in data.get("rounds", [])]
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_jsonable))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ---- markdown -------------------------------------------------------------------------------------
    def summary_markdown(self, digits: int = 4) -> str:
        """Test AUC / LogLoss per scenario and task, the mean over scenarios, and the time split."""
        tasks = self.tasks
        header = ["scenario"] + [f"{m} {t}" for t in tasks for m in ("AUC", "LogLoss")]
        lines = [
            f"**{self.strategy}** (seed {self.seed}, {self.runtime}; test from the {self.test_from} round: "
            f"{self.test_round})",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]

        def cells(metrics: Metrics) -> list[str]:
            return [
                _fmt(metrics.get(f"{m}@{t}", math.nan), digits) for t in tasks for m in ("auc", "logloss")
            ]

        for scenario in self.scenarios:
            lines.append("| " + " | ".join([scenario] + cells(self.test.get(scenario, {}))) + " |")
        mean = {
            f"{m}@{t}": mean_over_scenarios(self.test, f"{m}@{t}") for t in tasks for m in ("auc", "logloss")
        }
        lines.append("| " + " | ".join(["**mean**"] + cells(mean)) + " |")
        timing = self.timing()
        lines += [
            "",
            f"{len(self.rounds)} rounds, wall {timing['wall_seconds']:.1f} s: local training "
            f"{timing['train_seconds']:.1f} s, evaluation {timing['eval_seconds']:.1f} s, aggregation "
            f"{timing['aggregate_seconds']:.1f} s, runtime overhead {timing['overhead_seconds']:.1f} s "
            f"({100 * timing['overhead_share']:.1f} %)",
        ]
        return "\n".join(lines)


def _fmt(value: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _jsonable(value):
    """numpy scalars / arrays and paths in metrics or the config snapshot, as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON-serializable in a RunRecord: {type(value).__name__} {value!r}")
