"""The contracts between the parts of the federated package (PF-MSMTrec and its baselines).

Three parts meet here and nowhere else:

- a **client** (:class:`FederatedClient`, built in ``client.py``): one scenario's data (loaded from that
  scenario's own atomic files only), its multi-task model, local training and evaluation;
- a **strategy** (:class:`Strategy`, built in ``strategies.py`` from the pure rules of ``aggregation.py``):
  what each client sends, and how the server turns what it received into what each client gets back;
- a **runtime** that moves arrays between them: ``simulate.py`` (in-process loop, for tests and as the
  reference) and the Flower ServerApp / ClientApp (``flower_app/``, launched by ``launcher.py``). Given the
  same seed, both runtimes must produce the same numbers: the runtime only moves arrays.

Everything that crosses the wire is an :data:`Arrays` (name -> numpy array) plus flat metric dicts; names
are the client's parameter/buffer names, identical on every client of a run (same shapes too). Every array
a client holds has one :data:`Role`; the strategy decides which roles are sent, and ``private`` never is.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

Arrays = dict[str, np.ndarray]

Role = Literal["embedding", "shared", "task", "expert", "gate", "tower", "norm", "private"]
"""What an array is, so a strategy can decide what to do with it:

- ``embedding``: feature embedding rows over the run's common vocabulary (never user ids: those are private);
- ``shared``: the global-shared part of the parameter template (``W_k^G``) and any other fully shared weight;
- ``task``: task-specific template parts (``W_k^(T)``), aggregated across clients per task;
- ``expert``: expert network weights that take personalized aggregation (PF-MSMTrec) / FedAvg (baselines);
- ``gate``: the per-task gates of the MMoE;
- ``tower``: task towers (personalized tower aggregation in PF-MSMTrec, private under FedPer);
- ``norm``: BatchNorm affine parameters and running statistics: averaged like any weight by FedAvg, FedProx,
  FedPer and Ditto, kept on the client by FedBN and PF-MSMTrec (so that FedBN differs from FedAvg). A client
  that labels them ``private`` instead is still correct, only then no strategy ever averages them;
- ``private``: never leaves the client under any strategy: the scenario-specific template part
  ``W_k^(S,s)``, user-id embeddings, optimizer state.
"""

ROLES: tuple[str, ...] = ("embedding", "shared", "task", "expert", "gate", "tower", "norm", "private")


class FederatedClient(Protocol):
    """One scenario = one client. Built from (federated config, scenario name, seed); loads only its files."""

    scenario: str
    num_train: int  # training rows of this scenario (FedAvg weights)

    def roles(self) -> dict[str, Role]:
        """Every array name this client holds -> its role."""

    def groups(self) -> dict[str, str]:
        """Every non-private array name -> its aggregation group: the unit that personalized aggregation
        and conflict coordination treat as one vector, e.g. ``expert/3`` (all arrays of expert 3),
        ``tower/like``, ``gate/label``, ``embedding/token``, ``shared``. Identical on every client."""

    def upload(self, roles: set[str]) -> Arrays:
        """The arrays whose role is in ``roles`` (never ``private``), as float32/float64 numpy copies."""

    def download(self, arrays: Arrays) -> None:
        """Load the given arrays (a subset of the names) into the local model before training."""

    def fit(self, server_round: int, options: dict) -> dict[str, float]:
        """Local training for one round. ``options`` carries the strategy's local objective knobs
        (``local_epochs``, ``prox_mu``, ``ditto_lambda``, ...). Returns metrics, at least ``num_examples``,
        ``train_loss`` and ``train_seconds``."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Per-task metrics on ``valid`` or ``test`` through RecBole's evaluator: ``auc@<task>``,
        ``logloss@<task>`` for every task label, plus ``num_examples``."""

    def state(self) -> Arrays:
        """Everything needed to resume this client exactly (private arrays, personalized model, optimizer
        moments, RNG state as arrays): what the Flower ClientApp keeps in ``context.state``."""

    def load_state(self, state: Arrays) -> None:
        """Restore :meth:`state`."""


class Strategy(Protocol):
    # built by ``strategies.make_strategy(fed_config, roles, groups)``
    """The server side of one federated method (FedAvg, FedProx, FedBN, FedPer, Ditto, local-only,
    PF-MSMTrec). A pure object over numpy arrays: no Flower, no torch needed."""

    name: str

    def sent_roles(self) -> set[str]:
        """The roles a client uploads each round (empty for local-only; never ``private``)."""

    def client_options(self, server_round: int) -> dict:
        """The local-objective knobs sent to every client with the round's arrays."""

    def initial(self, uploads: dict[str, Arrays]) -> dict[str, Arrays]:
        """Round 0: from every client's initial upload, what each client loads before its first round
        (e.g. every client gets client 0's initial weights, so all start from one global model)."""

    def aggregate(
        self, server_round: int, uploads: dict[str, Arrays], num_examples: dict[str, int]
    ) -> dict[str, Arrays]:
        """From every client's upload after local training (client id -> arrays), what each client loads
        before the next round (client id -> arrays; personalized strategies send each its own)."""

    def state(self) -> Arrays:
        """The strategy's server-side state (e.g. the last global model), for resuming a stopped run."""

    def load_state(self, state: Arrays) -> None:
        """Restore :meth:`state`."""


# Factories (one per part; the runtimes use only these):
#   recbole_pmtrec.federated.config.load_config(path, overrides=None) -> dict        (federated config)
#   recbole_pmtrec.federated.client.make_client(fed_config, scenario, seed) -> FederatedClient
#   recbole_pmtrec.federated.strategies.make_strategy(fed_config, roles, groups) -> Strategy
#   recbole_pmtrec.federated.simulate.run(fed_config) -> RunRecord                   (in-process runtime)
#   recbole_pmtrec.federated.results.RunRecord: per-round metrics, timings, test results, JSON, tables
