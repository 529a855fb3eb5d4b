"""The server-side rules of the federated package (aggregation.py, strategies.py) against hand-worked cases:
every expected number below is worked out by hand in the comment next to it, not by calling the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from recbole_pmtrec.federated import aggregation as agg
from recbole_pmtrec.federated.config import defaults_file
from recbole_pmtrec.federated.strategies import STRATEGIES, make_strategy

DEFAULTS = yaml.safe_load(defaults_file().read_text())  # every knob's default, as load_config merges them


class FixedOrder:
    """An rng whose permutation keeps (or reverses) the order: lets a test fix PCGrad's projection order."""

    def __init__(self, reverse: bool = False):
        self.reverse = reverse

    def permutation(self, items):
        return list(reversed(items)) if self.reverse else list(items)


# ------------------------------------------------------------------------------------------ FedAvg / FedProx


def test_fedavg_weights_by_examples():
    uploads = {
        "a": {"w": np.array([1.0, 2.0]), "n": np.array([1])},
        "b": {"w": np.array([3.0, 6.0]), "n": np.array([4])},
    }
    out = agg.fedavg(uploads, {"a": 1, "b": 2})
    # w: (1*[1, 2] + 2*[3, 6]) / 3 = [7/3, 14/3];  n (integer): (1*1 + 2*4) / 3 = 3
    np.testing.assert_allclose(out["w"], [7 / 3, 14 / 3])
    assert out["n"].dtype == uploads["a"]["n"].dtype and out["n"].tolist() == [3]


def test_proximal_terms_numpy_and_torch():
    w, anchor = np.array([1.0, 2.0]), np.array([0.0, 1.0])
    # mu (w - w_g) = 0.5 * [1, 1];  mu/2 ||w - w_g||^2 = 0.25 * 2 = 0.5
    np.testing.assert_allclose(agg.proximal_gradient(w, anchor, 0.5), [0.5, 0.5])
    assert agg.proximal_penalty([(w, anchor)], 0.5) == pytest.approx(0.5)
    torch = pytest.importorskip("torch")
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    penalty = agg.proximal_penalty([(v, torch.tensor([0.0, 1.0]))], 0.5)
    penalty.backward()
    # autograd of the penalty equals the helper's gradient (Ditto: lambda (v - w))
    np.testing.assert_allclose(v.grad.numpy(), agg.proximal_gradient(w, anchor, 0.5))


def test_rowwise_mean_hand_case():
    starts = np.array([[[0.0, 0], [0, 0], [1, 1]]] * 2)
    finals = starts + np.array([[[1.0, 1], [0, 0], [2, 0]], [[3.0, 3], [0, 0], [0, 0]]])
    # row 0, both changed: (1*1 + 3*3) / 4 = 2.5;  row 1, nobody: stays 0;  row 2, only client 1: [1, 1] + [2, 0]
    np.testing.assert_allclose(agg.rowwise_mean(starts, finals, [1, 3]), [[2.5, 2.5], [0, 0], [3, 1]])
    # every row changed by every client: FedAvg
    finals = starts + 1 + np.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_allclose(agg.rowwise_mean(starts, finals, [1, 3]), (1 * finals[0] + 3 * finals[1]) / 4)
    # a vector is a table of one-number rows; one client is the identity
    np.testing.assert_allclose(
        agg.rowwise_mean(np.zeros((2, 2)), np.array([[1.0, 0], [3.0, 0]]), [1, 1]), [2, 0]
    )
    np.testing.assert_allclose(agg.rowwise_mean(starts[:1], finals[:1], [5]), finals[0])


# ---------------------------------------------------------------------------------------- FedBN / FedPer


ROLES = {
    "emb": "embedding",
    "e0.shared": "shared",
    "e0.task.like": "task",
    "e0.private": "private",
    "e0.bn.weight": "norm",
    "e0.bn.running_mean": "norm",
    "gate.like": "gate",
    "tower.like": "tower",
    "user_table": "private",
}


def test_partitions():
    sent, kept = agg.partition_names(ROLES, agg.FEDBN_KEPT_ROLES)
    assert kept == ["e0.bn.running_mean", "e0.bn.weight", "e0.private", "user_table"]
    assert "tower.like" in sent and "e0.bn.weight" not in sent
    sent, kept = agg.partition_names(ROLES, agg.FEDPER_KEPT_ROLES)
    assert kept == ["e0.private", "tower.like", "user_table"]
    assert agg.partition_names(ROLES, [])[1] == ["e0.private", "user_table"]  # private is always kept


# --------------------------------------------------------------------------------------------- template


def test_additive_template():
    weight = np.array([[1.0, -2.0], [0.5, 3.0]])
    global_part, task_parts, scenario_part = agg.split_additive(weight, ["label", "like"])
    assert set(task_parts) == {"label", "like"} and not scenario_part.any() and not task_parts["like"].any()
    np.testing.assert_array_equal(
        agg.combine_additive(global_part, task_parts["like"], scenario_part), weight
    )
    # W^G + W^T + W^S with hand values: [1, 1] + [0, 2] + [3, 0] = [4, 3]
    np.testing.assert_array_equal(
        agg.combine_additive(np.ones(2), np.array([0, 2.0]), np.array([3, 0.0])), [4, 3]
    )


def test_partition_template():
    # 10 units at 0.3 / 0.3 / 0.4 -> 3, 3, 4;  5 units at 0.5 / 0.5 -> round(2.5) = 2 (even), the rest 3
    assert agg.partition_sizes(10, {"shared": 0.3, "task": 0.3, "private": 0.4}) == {
        "shared": 3,
        "task": 3,
        "private": 4,
    }
    assert agg.partition_sizes(5, {"shared": 0.5, "private": 0.5}) == {"shared": 2, "private": 3}
    assert agg.partition_sizes(2, {"shared": 0.99, "private": 0.01}) == {"shared": 1, "private": 1}
    weight = np.arange(20.0).reshape(10, 2)
    parts = agg.split_partition(weight, {"shared": 3, "task": 3, "private": 4})
    np.testing.assert_array_equal(parts["task"], [[6, 7], [8, 9], [10, 11]])
    np.testing.assert_array_equal(agg.combine_partition(parts), weight)
    with pytest.raises(ValueError):
        agg.partition_sizes(1, {"shared": 0.5, "private": 0.5})


# ---------------------------------------------------------------------------------- conflict coordination


def test_projection_hand_case():
    # u = [1, 0], r = [-1, 1]: u.r = -1, ||r||^2 = 2 -> u - (-1/2) r = [1, 0] + [-0.5, 0.5] = [0.5, 0.5]
    np.testing.assert_allclose(agg.project_conflicting(np.array([1.0, 0]), np.array([-1.0, 1])), [0.5, 0.5])
    # no conflict (u.r = 1 >= 0): unchanged
    np.testing.assert_array_equal(agg.project_conflicting(np.array([1.0, 1]), np.array([1.0, 0])), [1, 1])


def test_pcgrad_two_clients_hand_case():
    deltas = np.array([[1.0, 0], [-1.0, 1]])
    # d1 off d2: [0.5, 0.5] (above);  d2 off d1: d2.d1 = -1, ||d1||^2 = 1 -> [-1, 1] + [1, 0] = [0, 1]
    np.testing.assert_allclose(agg.pcgrad_updates(deltas, FixedOrder()), [[0.5, 0.5], [0.0, 1.0]])


def test_pcgrad_three_clients_order_matters():
    deltas = np.array([[1.0, 0], [0.0, 1], [-1.0, -1]])
    # identity order. d1: vs d2 dot 0 (kept); vs d3 dot -1, ||d3||^2 = 2 -> [1, 0] - (-1/2)[-1, -1] = [0.5, -0.5]
    # d2: vs d1 dot 0; vs d3 dot -1 -> [0, 1] + [-0.5, -0.5] = [-0.5, 0.5]
    # d3: vs d1 dot -1, ||d1||^2 = 1 -> [-1, -1] + [1, 0] = [0, -1]; vs d2 dot -1 -> [0, -1] + [0, 1] = [0, 0]
    np.testing.assert_allclose(agg.pcgrad_updates(deltas, FixedOrder()), [[0.5, -0.5], [-0.5, 0.5], [0, 0]])
    # reversed order. d1: vs d3 first -> [0.5, -0.5]; then vs d2: dot -0.5 -> [0.5, -0.5] + 0.5 [0, 1] = [0.5, 0]
    assert agg.pcgrad_updates(deltas, FixedOrder(reverse=True))[0] == pytest.approx([0.5, 0.0])


def test_projection_removes_conflict_property():
    rng = np.random.default_rng(0)
    for _ in range(200):
        u, r = rng.normal(size=5), rng.normal(size=5)
        assert agg.project_conflicting(u, r) @ r >= -1e-12
        # with two clients each coordinated update no longer conflicts with the other's original update
        coordinated = agg.pcgrad_updates(np.stack([u, r]), rng)
        assert coordinated[0] @ r >= -1e-12 and coordinated[1] @ u >= -1e-12


def test_combiner_coordination_rescales_to_the_mean():
    pytest.importorskip("torch")
    deltas = np.array([[1.0, 0, 2], [3.0, 1, 0]])
    # EW is the sum [4, 1, 2]; two identical unit updates give 2, so the consensus is the mean [2, 0.5, 1]
    np.testing.assert_allclose(agg.CombinerCoordination("ew", {})("u", deltas, 1), [2.0, 0.5, 1.0])
    # no conflict (dot = 3 > 0): PCGrad's sum rescaled = the mean too
    np.testing.assert_allclose(agg.CombinerCoordination("pcgrad", {})("u", deltas, 1), [2.0, 0.5, 1.0])
    # identical updates come back unchanged from UPGrad (already mean-scaled)
    same = np.array([[1.0, -2.0], [1.0, -2.0]])
    np.testing.assert_allclose(agg.CombinerCoordination("upgrad", {})("u", same, 1), [1.0, -2.0], atol=1e-6)
    with pytest.raises(ValueError, match="need the clients' losses"):
        agg.CombinerCoordination("uw", {})


def test_random_combiner_is_seeded_per_round_and_unit():
    pytest.importorskip("torch")
    deltas = np.array([[1.0, 0], [0.0, 1], [1.0, 1]])
    first, again = agg.CombinerCoordination("rlw", {}, seed=5), agg.CombinerCoordination("rlw", {}, seed=5)
    np.testing.assert_array_equal(first("expert/0#shared", deltas, 3), again("expert/0#shared", deltas, 3))
    assert not np.allclose(first("expert/0#shared", deltas, 3), first("expert/0#shared", deltas, 4))


# ---------------------------------------------------------------------------------- personalized aggregation


def test_cosine_matrix_hand_case():
    s = 1 / math.sqrt(2)
    cos = agg.cosine_matrix(np.array([[1.0, 0], [0.0, 1], [1.0, 1], [0.0, 0]]))
    expected = [[1, 0, s, 0], [0, 1, s, 0], [s, s, 1, 0], [0, 0, 0, 1]]  # zero update: 0 off the diagonal
    np.testing.assert_allclose(cos, expected)


def test_similarity_weights_hand_case():
    deltas = np.array([[1.0, 0], [-1.0, 0]])  # cos = -1
    # T = 1: row 1 = [e, e^-1] / (e + e^-1) = [1, e^-2] / (1 + e^-2)
    p = 1 / (1 + math.exp(-2))
    np.testing.assert_allclose(agg.similarity_weights(deltas, 1.0), [[p, 1 - p], [1 - p, p]])
    # weighted by n = [1, 3]: row 1 = [e, 3 e^-1] / (e + 3 e^-1) = [1, 3 e^-2] / (1 + 3 e^-2)
    q = 1 / (1 + 3 * math.exp(-2))
    np.testing.assert_allclose(agg.similarity_weights(deltas, 1.0, [1, 3])[0], [q, 1 - q])
    # T -> inf: uniform, or FedAvg's n_j / sum n
    np.testing.assert_allclose(agg.similarity_weights(deltas, math.inf), [[0.5, 0.5]] * 2)
    np.testing.assert_allclose(agg.similarity_weights(deltas, 1e12, [1, 3]), [[0.25, 0.75]] * 2)


def test_aggregate_unit_hand_cases():
    starts = np.array([[1.0, 1], [1.0, 1]])
    finals = np.array([[2.0, 1], [0.0, 2]])  # deltas [1, 0], [-1, 1]
    n = [1, 3]
    # mean: (1*[2, 1] + 3*[0, 2]) / 4 = [0.5, 1.75] for both
    np.testing.assert_allclose(agg.aggregate_unit(starts, finals, n, "mean"), [[0.5, 1.75]] * 2)
    # coordinated mean, PCGrad: coordinated deltas [0.5, 0.5], [0, 1] -> [1, 1] + (1*[.5, .5] + 3*[0, 1]) / 4
    out = agg.aggregate_unit(starts, finals, n, "coordinated_mean", conflict="pcgrad", rng=FixedOrder())
    np.testing.assert_allclose(out, [[1.125, 1.875]] * 2)
    # personalized, no coordination, uniform weights, T = 1: cos(d1, d2) = -1/sqrt(2);
    # a_11 = e / (e + e^c), theta_1 = a_11 [2, 1] + (1 - a_11) [0, 2]
    c = -1 / math.sqrt(2)
    a11 = math.exp(1) / (math.exp(1) + math.exp(c))
    out = agg.aggregate_unit(starts, finals, n, "personalized", temperature=1.0, example_weights=False)
    np.testing.assert_allclose(out[0], [2 * a11, a11 + 2 * (1 - a11)])
    np.testing.assert_allclose(out[1], [2 * (1 - a11), (1 - a11) + 2 * a11])
    # personalized + PCGrad: the same weights (from the raw deltas) over start + coordinated delta
    # = a_11 [1.5, 1.5] + (1 - a_11) [1, 2]
    out = agg.aggregate_unit(
        starts,
        finals,
        n,
        "personalized",
        conflict="pcgrad",
        temperature=1.0,
        example_weights=False,
        rng=FixedOrder(),
    )
    np.testing.assert_allclose(out[0], [1.5 * a11 + (1 - a11), 1.5 * a11 + 2 * (1 - a11)])


@pytest.mark.parametrize("rule", agg.UNIT_RULES)
@pytest.mark.parametrize("conflict", ["none", "pcgrad"])
def test_aggregate_unit_properties(rule, conflict):
    rng = np.random.default_rng(1)
    start, final = rng.normal(size=(1, 6)), rng.normal(size=(1, 6))
    # one client: identity
    np.testing.assert_allclose(agg.aggregate_unit(start, final, [7], rule, conflict, 0.1, rng=rng), final)
    # identical clients (same start, same update): unchanged
    starts, finals = np.repeat(start, 3, axis=0), np.repeat(final, 3, axis=0)
    np.testing.assert_allclose(
        agg.aggregate_unit(starts, finals, [1, 2, 3], rule, conflict, 0.1, rng=rng), finals
    )


def test_personalized_tends_to_fedavg():
    rng = np.random.default_rng(2)
    start = rng.normal(size=(1, 4))
    starts, finals = np.repeat(start, 3, axis=0), start + rng.normal(size=(3, 4))
    n = [10, 20, 70]
    out = agg.aggregate_unit(starts, finals, n, "personalized", "none", temperature=1e9)
    np.testing.assert_allclose(out, np.tile((np.array(n) / 100) @ finals, (3, 1)))
    out = agg.aggregate_unit(
        starts, finals, n, "personalized", "none", temperature=1e9, example_weights=False
    )
    np.testing.assert_allclose(out, np.tile(finals.mean(axis=0), (3, 1)))


# ----------------------------------------------------------------------------------------------- strategies

GROUPS = {
    "emb": "embedding/token",
    "e0.shared": "expert/0",
    "e0.task.like": "expert/0/like",
    "e0.bn.weight": "expert/0",
    "e0.bn.running_mean": "expert/0",
    "gate.like": "gate/like",
    "tower.like": "tower/like",
}
CONFIG = {
    **DEFAULTS,
    "strategy": "fedavg",
    "seed": 3,
    "local_epochs": 1,
    "prox_mu": 0.01,
    "ditto_lambda": 0.1,
    "pfm_temperature": 0.5,
    "pfm_conflict": "pcgrad",
}


def arrays(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(2, value) for name in ROLES}


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(ValueError, match="fedavg, fedprox"):
        make_strategy({**CONFIG, "strategy": "fedsgd"}, ROLES, GROUPS)


@pytest.mark.parametrize("name", STRATEGIES)
def test_nothing_kept_leaves_a_client(name):
    strategy = make_strategy({**CONFIG, "strategy": name}, ROLES, GROUPS)
    kept = {"local": set(ROLES.values()), "fedbn": {"norm"}, "fedper": {"tower"}, "pfmsmtrec": {"norm"}}.get(
        name, set()
    )
    kept_names = {n for n, r in ROLES.items() if r in kept or r == "private"}
    sent_names = set(ROLES) - kept_names
    uploads = {
        c: {n: a for n, a in arrays(v).items() if ROLES[n] in strategy.sent_roles()}
        for c, v in [("a", 1), ("b", 3)]
    }
    assert set(uploads["a"]) == sent_names
    for out in (strategy.initial(uploads), strategy.aggregate(1, uploads, {"a": 1, "b": 1})):
        for client_arrays in out.values():
            assert set(client_arrays) == sent_names
    with pytest.raises(ValueError, match="keeps on the client"):
        strategy.aggregate(2, {"a": arrays(1.0), "b": arrays(3.0)}, {"a": 1, "b": 1})


def test_fedavg_strategy_hand_case_and_options():
    strategy = make_strategy(CONFIG, ROLES, GROUPS)
    sent = strategy.sent_roles()
    up = {c: {n: a for n, a in arrays(v).items() if ROLES[n] in sent} for c, v in [("a", 1.0), ("b", 4.0)]}
    init = strategy.initial(up)
    assert all((init["b"][n] == 1.0).all() for n in init["b"])  # everyone starts from client "a" (first id)
    out = strategy.aggregate(1, up, {"a": 2, "b": 1})
    assert all(np.allclose(out[c][n], 2.0) for c in out for n in out[c])  # (2*1 + 1*4) / 3 = 2
    assert strategy.client_options(1)["prox_mu"] == 0.0
    assert (
        make_strategy({**CONFIG, "strategy": "fedprox"}, ROLES, GROUPS).client_options(1)["prox_mu"] == 0.01
    )
    ditto = make_strategy({**CONFIG, "strategy": "ditto"}, ROLES, GROUPS).client_options(1)
    assert ditto["ditto_lambda"] == 0.1 and ditto["personal_model"]


def test_pfmsmtrec_personalized_towers_and_resume():
    config = {**CONFIG, "strategy": "pfmsmtrec", "pfm_example_weights": False, "pfm_temperature": 1.0}
    strategy = make_strategy(config, ROLES, GROUPS)
    sent = strategy.sent_roles()
    assert "norm" not in sent and "private" not in sent
    zero = {n: np.zeros(2) for n in ROLES if ROLES[n] in sent}
    strategy.initial({"a": zero, "b": zero})
    up = {"a": dict(zero), "b": dict(zero)}
    up["a"]["tower.like"], up["b"]["tower.like"] = np.array([1.0, 0]), np.array([-1.0, 1])
    up["a"]["gate.like"], up["b"]["gate.like"] = np.array([1.0, 0]), np.array([3.0, 0])
    resumed = make_strategy(config, ROLES, GROUPS)
    resumed.load_state(strategy.state())
    out = strategy.aggregate(1, up, {"a": 1, "b": 1})
    # tower (personalized + PCGrad, the hand case above from start 0): a_11 [0.5, 0.5] + (1 - a_11) [0, 1]
    a11 = math.exp(1) / (math.exp(1) + math.exp(-1 / math.sqrt(2)))
    np.testing.assert_allclose(out["a"]["tower.like"], [0.5 * a11, 0.5 * a11 + (1 - a11)])
    np.testing.assert_allclose(out["a"]["gate.like"], [2.0, 0])  # gate: FedAvg (1 + 3) / 2
    again = resumed.aggregate(1, up, {"a": 1, "b": 1})
    assert all(np.array_equal(out[c][n], again[c][n]) for c in out for n in out[c])
    # a client missing from round 2 keeps its personalized tower and gets the new global gate
    up2 = {"a": {n: a + 1.0 for n, a in out["a"].items()}}
    out2 = strategy.aggregate(2, up2, {"a": 1})
    np.testing.assert_array_equal(out2["b"]["tower.like"], out["b"]["tower.like"])
    np.testing.assert_allclose(out2["b"]["gate.like"], [3.0, 1.0])


def test_pfmsmtrec_rejects_bad_rules():
    with pytest.raises(ValueError, match="never leave"):
        make_strategy(
            {**CONFIG, "strategy": "pfmsmtrec", "pfm_role_rules": {"private": "mean"}}, ROLES, GROUPS
        )
    with pytest.raises(ValueError, match="bad role rules"):
        make_strategy(
            {**CONFIG, "strategy": "pfmsmtrec", "pfm_role_rules": {"tower": "median"}}, ROLES, GROUPS
        )


def test_stateful_combiner_state_resumes():
    pytest.importorskip("torch")
    config = {**CONFIG, "strategy": "pfmsmtrec", "pfm_conflict": "gradvac"}
    rng = np.random.default_rng(4)
    sent_names = [n for n, r in ROLES.items() if r not in ("norm", "private")]

    def uploads():
        return {c: {n: rng.normal(size=2) for n in sent_names} for c in ("a", "b", "c")}

    first_round, second_round = uploads(), uploads()
    strategy = make_strategy(config, ROLES, GROUPS)
    strategy.initial(uploads())
    strategy.aggregate(1, first_round, {"a": 1, "b": 2, "c": 3})
    state = strategy.state()
    assert any(k.startswith("combiner|") and k.endswith("cosine_targets") for k in state)
    resumed = make_strategy(config, ROLES, GROUPS)
    resumed.load_state(state)
    out = strategy.aggregate(2, second_round, {"a": 1, "b": 2, "c": 3})
    again = resumed.aggregate(2, second_round, {"a": 1, "b": 2, "c": 3})
    assert all(np.array_equal(out[c][n], again[c][n]) for c in out for n in out[c])
    forgetful = make_strategy(config, ROLES, GROUPS)  # without GradVac's targets the next round differs
    forgetful.load_state({k: a for k, a in state.items() if not k.startswith("combiner|")})
    other = forgetful.aggregate(2, second_round, {"a": 1, "b": 2, "c": 3})
    assert not all(np.array_equal(out[c][n], other[c][n]) for c in out for n in out[c])


def test_pfmsmtrec_rowwise_embeddings():
    rules = {**DEFAULTS["pfm_role_rules"], "embedding": "rowwise_mean"}
    strategy = make_strategy({**CONFIG, "strategy": "pfmsmtrec", "pfm_role_rules": rules}, ROLES, GROUPS)
    sent = sorted(n for n, r in ROLES.items() if r in strategy.sent_roles())
    zero = {n: np.zeros(2) for n in sent}
    strategy.initial({"a": zero, "b": zero})
    up = {"a": dict(zero), "b": dict(zero)}
    up["a"]["emb"], up["b"]["emb"] = np.array([4.0, 0]), np.array([0.0, 8])  # each changed one "row"
    out = strategy.aggregate(1, up, {"a": 1, "b": 3})
    np.testing.assert_array_equal(out["a"]["emb"], [4, 8])  # FedAvg: [1, 6]
    np.testing.assert_array_equal(out["b"]["emb"], [4, 8])
