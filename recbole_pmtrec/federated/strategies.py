"""The server side of every federated method, built from the pure rules of ``aggregation.py``.

Every strategy here is one :class:`RoleStrategy`: a rule per role that is sent (the roles it does not name
stay on the client), applied per aggregation *unit* = (group, role), e.g. the ``shared`` arrays of
``expert/3``:

=========  ===================================================================================================
local      nothing is sent; every client trains alone
fedavg     every role but ``private``: ``mean`` (FedAvg)
fedprox    as fedavg; clients add ``prox_mu/2 ||w - w_g||^2``
ditto      as fedavg over the clients' global copies; clients keep a personal model (``ditto_lambda``)
fedbn      as fedavg, but ``norm`` (BatchNorm affine + running statistics) stays on the client
fedper     as fedavg, but ``tower`` stays on the client
pfmsmtrec  ``pfm_role_rules``: per role ``mean`` | ``rowwise_mean`` | ``coordinated_mean`` | ``personalized``
           | ``local``, with conflict coordination ``pfm_conflict``, temperature ``pfm_temperature``
=========  ===================================================================================================
"""

from __future__ import annotations

import numpy as np

from recbole_pmtrec.federated.aggregation import (
    FEDBN_KEPT_ROLES,
    FEDPER_KEPT_ROLES,
    ROW_RULES,
    UNIT_RULES,
    CombinerCoordination,
    aggregate_unit,
    rowwise_mean,
    stable_seed,
)

STRATEGIES = ("local", "fedavg", "fedprox", "fedbn", "fedper", "ditto", "pfmsmtrec")
SENDABLE_ROLES = ("embedding", "shared", "task", "expert", "gate", "tower", "norm")
KEPT_ROLES = {
    "local": frozenset(SENDABLE_ROLES),
    "fedavg": frozenset(),
    "fedprox": frozenset(),
    "ditto": frozenset(),
    "fedbn": FEDBN_KEPT_ROLES,
    "fedper": FEDPER_KEPT_ROLES,
}


def knob(fed_config: dict, key: str):
    """``fed_config[key]``; every knob's default lives in ``properties/federated/defaults.yaml``, which
    ``config.load_config`` merges under a run's yaml."""
    try:
        return fed_config[key]
    except KeyError:
        raise KeyError(
            f"federated config has no {key!r}: load it with recbole_pmtrec.federated.config.load_config "
            "(defaults from properties/federated/defaults.yaml)"
        ) from None


class RoleStrategy:
    """A strategy as rules per role (see the module). Keeps, per client, what it last sent: the start of the
    client's round, from which ``delta_i`` is measured, and what resumes the server."""

    def __init__(
        self,
        name: str,
        roles: dict[str, str],
        groups: dict[str, str],
        rules: dict[str, str],
        options: dict,
        *,
        conflict: str = "none",
        temperatures: dict[str, float] | None = None,
        example_weights: bool = True,
        seed: int = 0,
        combiner_knobs: dict | None = None,
    ):
        known = (*UNIT_RULES, *ROW_RULES)
        bad = {r: rule for r, rule in rules.items() if r not in SENDABLE_ROLES or rule not in known}
        if bad:
            raise ValueError(
                f"{name}: bad role rules {bad}: roles {', '.join(SENDABLE_ROLES)} (never private), rules "
                f"{', '.join(known)} or local"
            )
        self.name = name
        self.roles = dict(roles)
        self.rules = dict(rules)
        self.options = dict(options)
        self.conflict = conflict
        self.temperatures = dict(temperatures or {})
        self.example_weights = example_weights
        self.seed = int(seed)
        self.consensus = None
        if conflict not in ("none", "pcgrad"):
            self.consensus = CombinerCoordination(conflict, combiner_knobs or {}, seed)
        self.units: dict[str, list[str]] = {}
        for array_name in sorted(roles):
            role = roles[array_name]
            if role in self.rules:
                self.units.setdefault(f"{groups.get(array_name, array_name)}#{role}", []).append(array_name)
        self.sent_names = {n for names in self.units.values() for n in names}
        self.sent: dict[str, dict[str, np.ndarray]] = {}
        self.server_round = 0

    # ---- contracts.Strategy ---------------------------------------------------------------------------
    def sent_roles(self) -> set[str]:
        return set(self.rules)

    def client_options(self, server_round: int) -> dict:
        return dict(self.options)

    def initial(self, uploads: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
        """Every client starts from the first client's (sorted by id) initial arrays: one global model."""
        self._check_uploads(uploads)
        first = uploads[min(uploads)]
        self.sent = {
            client: {n: np.array(first[n], copy=True) for n in self.sent_names} for client in uploads
        }
        self.server_round = 0
        return self._outgoing(self.sent)

    def aggregate(self, server_round: int, uploads: dict, num_examples: dict[str, int]) -> dict:
        """Every unit by its role's rule over the clients that uploaded; a client missing from this round gets
        the new global units and keeps its personalized ones."""
        self._check_uploads(uploads)
        clients = sorted(uploads)
        missing_start = [c for c in clients if c not in self.sent]
        if missing_start:
            raise ValueError(
                f"{self.name}: round {server_round}: no initial arrays for clients {missing_start}"
            )
        weights = [float(num_examples[c]) for c in clients]
        for unit, names in self.units.items():
            rule = self.rules[self.roles[names[0]]]
            if rule in ROW_RULES:
                self._aggregate_rows(clients, uploads, weights, names)
                continue
            finals = np.stack([_flatten(uploads[c], names) for c in clients])
            starts = np.stack([_flatten(self.sent[c], names) for c in clients])
            rows = aggregate_unit(
                starts,
                finals,
                weights,
                rule,
                conflict=self.conflict,
                temperature=self.temperatures.get(self.roles[names[0]], 1.0),
                example_weights=self.example_weights,
                rng=np.random.default_rng(stable_seed(self.seed, server_round, unit)),
                consensus=None
                if self.consensus is None
                else lambda d, u=unit: self.consensus(u, d, server_round),
            )
            for client, row in zip(clients, rows):
                self.sent[client].update(_unflatten(row, self.sent[client], names))
            if rule != "personalized":
                for client in set(self.sent) - set(clients):
                    self.sent[client].update(_unflatten(rows[0], self.sent[client], names))
        self.server_round = server_round
        return self._outgoing(self.sent)

    def state(self) -> dict[str, np.ndarray]:
        state = {"server_round": np.array(self.server_round, dtype=np.int64)}
        for client, arrays in self.sent.items():
            if "/" in client:
                raise ValueError(f"client id {client!r} must not contain '/' (it keys the server state)")
            state.update({f"sent/{client}/{n}": a for n, a in arrays.items()})
        if self.consensus is not None:
            state.update({f"combiner|{k}": a for k, a in self.consensus.state().items()})
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.server_round = int(state["server_round"])
        self.sent = {}
        for key, array in state.items():
            if key.startswith("sent/"):
                client, array_name = key[len("sent/") :].split("/", 1)
                self.sent.setdefault(client, {})[array_name] = np.array(array, copy=True)
        if self.consensus is not None:
            prefix = "combiner|"
            self.consensus.load_state({k[len(prefix) :]: a for k, a in state.items() if k.startswith(prefix)})

    # ---- helpers --------------------------------------------------------------------------------------
    def _aggregate_rows(
        self, clients: list[str], uploads: dict, weights: list[float], names: list[str]
    ) -> None:
        """``rowwise_mean`` per array of a unit; every client (also one missing this round) gets the result."""
        for array_name in names:
            starts = np.stack([self.sent[c][array_name] for c in clients])
            finals = np.stack([uploads[c][array_name] for c in clients])
            merged = rowwise_mean(starts, finals, weights)
            for client in self.sent:
                self.sent[client].update(_unflatten(merged.ravel(), self.sent[client], [array_name]))

    def _outgoing(self, arrays: dict) -> dict[str, dict[str, np.ndarray]]:
        return {c: {n: np.array(a[n], copy=True) for n in self.sent_names} for c, a in arrays.items()}

    def _check_uploads(self, uploads: dict) -> None:
        if not uploads:
            raise ValueError(f"{self.name}: no client uploaded anything this round")
        for client, arrays in uploads.items():
            extra = sorted(set(arrays) - self.sent_names)
            if extra:
                kinds = sorted({self.roles.get(n, "unknown") for n in extra})
                raise ValueError(
                    f"{self.name}: client {client!r} sent {extra[:5]} (roles {kinds}), which this strategy keeps "
                    "on the client: the client must upload only the roles in sent_roles()"
                )
            missing = sorted(self.sent_names - set(arrays))
            if missing:
                raise ValueError(f"{self.name}: client {client!r} did not send {missing[:5]}")


def _flatten(arrays: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[n], dtype=np.float64).ravel() for n in names])


def _unflatten(row: np.ndarray, like: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Cut ``row`` back into arrays shaped and typed as ``like``'s (integers rounded: BN's batch counts)."""
    out, offset = {}, 0
    for name in names:
        template = np.asarray(like[name])
        piece = row[offset : offset + template.size].reshape(template.shape)
        offset += template.size
        integer = np.issubdtype(template.dtype, np.integer)
        out[name] = (np.rint(piece) if integer else piece).astype(template.dtype)
    return out


def make_strategy(fed_config: dict, roles: dict[str, str], groups: dict[str, str]) -> RoleStrategy:
    """The strategy named by ``fed_config['strategy']``, its knobs from the same config."""
    name = str(fed_config["strategy"]).lower()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {fed_config['strategy']!r}; valid: {', '.join(STRATEGIES)}")
    unknown_roles = sorted({r for r in roles.values() if r not in (*SENDABLE_ROLES, "private")})
    if unknown_roles:
        raise ValueError(
            f"client roles {unknown_roles} are not contract roles ({', '.join(SENDABLE_ROLES)}, private)"
        )
    options = {
        "strategy": name,
        "local_epochs": int(knob(fed_config, "local_epochs")),
        "prox_mu": 0.0,
        "ditto_lambda": 0.0,
        "personal_model": name == "ditto",
    }
    if name == "fedprox":
        options["prox_mu"] = float(knob(fed_config, "prox_mu"))
    if name == "ditto":
        options["ditto_lambda"] = float(knob(fed_config, "ditto_lambda"))
    seed = int(knob(fed_config, "seed"))
    if name != "pfmsmtrec":
        rules = {r: "mean" for r in SENDABLE_ROLES if r not in KEPT_ROLES[name]}
        return RoleStrategy(name, roles, groups, rules, options, seed=seed)
    options["prox_mu"] = float(knob(fed_config, "pfm_prox_mu"))
    rules = {role: rule for role, rule in dict(knob(fed_config, "pfm_role_rules")).items() if rule != "local"}
    if "private" in rules:
        raise ValueError(
            "pfm_role_rules: private arrays never leave a client; set private to local or leave it out"
        )
    temperature = float(knob(fed_config, "pfm_temperature"))
    tower_temperature = knob(fed_config, "pfm_tower_temperature")
    temperatures = {r: temperature for r in SENDABLE_ROLES}
    temperatures["tower"] = temperature if tower_temperature is None else float(tower_temperature)
    return RoleStrategy(
        name,
        roles,
        groups,
        rules,
        options,
        conflict=str(knob(fed_config, "pfm_conflict")).lower(),
        temperatures=temperatures,
        example_weights=bool(knob(fed_config, "pfm_example_weights")),
        seed=seed,
        combiner_knobs=fed_config,
    )
