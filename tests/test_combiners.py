"""Task-level combiners: every check compares with an independent computation (a hand-worked case, a
property the method promises, or another implementation), never with the code's own earlier output."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from torchjd import aggregation as jd

from recbole_pmtrec.trainer.combiners import COMBINERS, build_combiner

TASK_LEVEL = [
    "rlw",
    "uw",
    "dwa",
    "gradnorm",
    "graddrop",
    "pcgrad",
    "gradvac",
    "cagrad",
    "aligned_mtl",
    "nash_mtl",
    "mgda",
    "upgrad",
    "imtl_g",
]
STATEFUL = ["uw", "dwa", "gradnorm", "gradvac", "nash_mtl"]
COMBINERS_DIR = Path(__file__).resolve().parents[1] / "recbole_pmtrec" / "trainer" / "combiners"
DEFAULTS_YAML = Path(__file__).resolve().parents[1] / "properties" / "combiners.yaml"


class Knobs(dict):
    """Stands in for a RecBole Config: a missing key reads as None."""

    def __missing__(self, key):
        return None


def make(name: str, num_tasks: int, **knobs):
    return build_combiner(Knobs(mtl_method=name, **knobs), num_tasks)


def combine(combiner, rows, losses=None, epoch: int = 1) -> torch.Tensor:
    jacobian = torch.as_tensor(rows, dtype=torch.float64)
    if losses is None:
        losses = torch.ones(jacobian.shape[0], dtype=torch.float64)
    return combiner.combine(jacobian, torch.as_tensor(losses, dtype=torch.float64), epoch)


def close(actual, expected, tol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.to(torch.float64), expected, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------ registry
def test_every_task_level_method_is_registered_and_builds_from_the_yaml_defaults():
    assert set(TASK_LEVEL) <= set(COMBINERS)
    for name in TASK_LEVEL:
        combiner = make(name, 3)
        assert combiner.name == name and not combiner.per_row


def test_unknown_name_lists_the_available_combiners():
    with pytest.raises(ValueError) as error:
        make("no_such_method", 2)
    for name in [*TASK_LEVEL, "ew", "pmtrec"]:
        assert name in str(error.value)


def test_yaml_documents_every_knob_the_combiners_read_and_nothing_else():
    defaults = yaml.safe_load(DEFAULTS_YAML.read_text())
    read = set()
    for module in COMBINERS_DIR.glob("*.py"):
        read |= set(re.findall(r'knob\(\s*(?:self\.)?config,\s*"(\w+)"', module.read_text()))
    assert read == set(defaults)


def test_a_config_value_overrides_the_yaml_default():
    assert make("cagrad", 2).aggregator.c == 0.4
    assert make("cagrad", 2, cagrad_c=0.9).aggregator.c == 0.9


# ------------------------------------------------------------------------------------- one task
@pytest.mark.parametrize("name", TASK_LEVEL)
def test_with_one_task_the_direction_is_that_tasks_gradient(name):
    """Every method returns g itself, except CAGrad: (1 + c) g, and Nash-MTL: g / ||g|| (alpha^2 ||g||^2 = 1).
    (RLW, UW, DWA, GradNorm weight a single task by exactly 1 at the first step.)"""
    torch.manual_seed(0)
    gradient = torch.randn(1, 40, dtype=torch.float64)
    direction = combine(make(name, 1), gradient)
    expected = {"cagrad": 1.4 * gradient[0], "nash_mtl": gradient[0] / gradient.norm()}
    close(direction, expected.get(name, gradient[0]))


# ------------------------------------------------------------------------------ hand-worked cases
def test_ew_is_the_column_sum():
    close(combine(make("ew", 3), [[1.0, -2.0], [0.5, 4.0], [3.0, 0.0]]), [4.5, 2.0])


@pytest.mark.parametrize("seed", range(5))
def test_pcgrad_projects_two_conflicting_gradients_off_each_other(seed):
    """g1 = (1, 0), g2 = (-1, 1), g1.g2 = -1: g1' = g1 + g2 / 2 = (0.5, 0.5), g2' = g2 + g1 = (0, 1).
    With two tasks the random order cannot matter."""
    torch.manual_seed(seed)
    close(combine(make("pcgrad", 2), [[1.0, 0.0], [-1.0, 1.0]]), [0.5, 1.5])


def test_pcgrad_leaves_agreeing_gradients_alone():
    close(combine(make("pcgrad", 3), [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]), [2.0, 3.0])


def test_mgda_on_two_orthogonal_unit_vectors_is_their_midpoint():
    close(combine(make("mgda", 2), [[1.0, 0.0], [0.0, 1.0]]), [0.5, 0.5])


def test_mgda_picks_the_shorter_gradient_when_it_is_the_min_norm_point():
    """g1 = (1, 0), g2 = (2, 0): the hull is the segment [1, 2] x {0}, its min-norm point is g1."""
    close(combine(make("mgda", 2), [[1.0, 0.0], [2.0, 0.0]]), [1.0, 0.0])


def test_upgrad_never_conflicts_with_any_task():
    torch.manual_seed(1)
    jacobian = torch.randn(4, 30, dtype=torch.float64)
    jacobian[1] = -0.8 * jacobian[0] + 0.3 * torch.randn(30, dtype=torch.float64)  # a strong conflict
    direction = combine(make("upgrad", 4), jacobian)
    assert direction.norm() > 1e-3
    assert bool((jacobian @ direction >= -1e-6).all()), jacobian @ direction


def test_cagrad_with_c_zero_is_the_mean():
    torch.manual_seed(2)
    jacobian = torch.randn(3, 12, dtype=torch.float64)
    close(combine(make("cagrad", 3, cagrad_c=0.0), jacobian), jacobian.mean(dim=0))


def test_imtl_g_projects_equally_onto_every_unit_task_gradient():
    torch.manual_seed(3)
    jacobian = torch.randn(3, 20, dtype=torch.float64) * torch.tensor(
        [[1.0], [5.0], [0.2]], dtype=torch.float64
    )
    direction = combine(make("imtl_g", 3), jacobian)
    projections = (jacobian / jacobian.norm(dim=1, keepdim=True)) @ direction
    close(projections, projections[0].expand(3), tol=1e-8)
    weights = torch.linalg.lstsq(jacobian.T, direction.unsqueeze(1)).solution.squeeze(1)
    close(weights.sum(), 1.0, tol=1e-8)


def test_aligned_mtl_equalises_two_orthogonal_gradients():
    """G = diag(4, 1): B = sqrt(1) diag(1/2, 1), alpha = B (1/2, 1/2) = (1/4, 1/2), d = (0.5, 0.5)."""
    close(combine(make("aligned_mtl", 2), [[2.0, 0.0], [0.0, 1.0]]), [0.5, 0.5])


def test_nash_mtl_solves_the_bargaining_equations():
    """Orthogonal g1 = (2, 0), g2 = (0, 1): alpha_t^2 ||g_t||^2 = 1, alpha = (1/2, 1), d = (1, 1);
    with max_norm 1 the same direction is clipped to unit length."""
    rows = [[2.0, 0.0], [0.0, 1.0]]
    close(combine(make("nash_mtl", 2, nash_mtl_max_norm=0.0), rows), [1.0, 1.0], tol=1e-3)
    close(combine(make("nash_mtl", 2), rows), [math.sqrt(0.5), math.sqrt(0.5)], tol=1e-3)


def test_nash_mtl_weights_satisfy_alpha_times_g_dot_d_equal_one():
    torch.manual_seed(4)
    jacobian = torch.randn(3, 25, dtype=torch.float64)
    direction = combine(make("nash_mtl", 3, nash_mtl_max_norm=0.0), jacobian)
    alpha = torch.linalg.lstsq(jacobian.T, direction.unsqueeze(1)).solution.squeeze(1)
    assert bool((alpha > 0).all())
    close(alpha * (jacobian @ direction), torch.ones(3), tol=1e-3)


def test_graddrop_keeps_every_component_when_the_tasks_agree_in_sign():
    rows = [[1.0, -2.0, 0.0], [3.0, -1.0, 0.5]]
    close(combine(make("graddrop", 2), rows), [4.0, -3.0, 0.5])


def test_graddrop_keeps_one_sign_per_coordinate_and_leak_one_is_the_sum():
    torch.manual_seed(5)
    jacobian = torch.randn(3, 200, dtype=torch.float64)
    direction = combine(make("graddrop", 3), jacobian)
    positive = jacobian.clamp_min(0).sum(dim=0)
    negative = jacobian.clamp_max(0).sum(dim=0)
    picked = torch.isclose(direction, positive) | torch.isclose(direction, negative)
    assert bool(picked.all())
    assert bool(torch.isclose(direction, positive).any()) and bool(torch.isclose(direction, negative).any())
    close(combine(make("graddrop", 3, graddrop_leak=1.0), jacobian), jacobian.sum(dim=0))


def test_rlw_weights_are_a_fresh_softmax_of_normal_draws_each_step():
    combiner = make("rlw", 3)
    identity = torch.eye(3, dtype=torch.float64)
    torch.manual_seed(6)
    first = combine(combiner, identity)
    second = combine(combiner, identity)
    torch.manual_seed(6)
    draws = [torch.randn(3, dtype=torch.float64) for _ in range(2)]
    close(first, torch.exp(draws[0]) / torch.exp(draws[0]).sum())
    close(second, torch.exp(draws[1]) / torch.exp(draws[1]).sum())
    assert not torch.allclose(first, second)


def test_uw_weights_follow_its_own_adam_on_the_kendall_objective():
    """s = 0, L = (2, 0.5): d = g1 + g2; dL_UW/ds = 1 - L = (-1, 0.5); Adam's first step moves each s_t by
    lr against the sign of its gradient: s = (0.1, -0.1), next d = e^-0.1 g1 + e^0.1 g2."""
    combiner = make("uw", 2, uw_lr=0.1)
    rows = [[1.0, 0.0], [0.0, 1.0]]
    close(combine(combiner, rows, losses=[2.0, 0.5]), [1.0, 1.0])
    close(combine(combiner, rows, losses=[2.0, 0.5]), [math.exp(-0.1), math.exp(0.1)])


def test_dwa_weights_from_a_hand_computed_loss_history():
    """Epoch means (1, 2) then (0.5, 2): r = (0.5, 1), w = 2 softmax(r / 2)."""
    combiner = make("dwa", 2)
    rows = [[1.0, 0.0], [0.0, 1.0]]
    combiner.end_epoch(1, torch.tensor([1.0, 2.0]))
    close(combine(combiner, rows, epoch=2), [1.0, 1.0])  # one epoch recorded: equal weights
    combiner.end_epoch(2, torch.tensor([0.5, 2.0]))
    low, high = math.exp(0.25), math.exp(0.5)
    close(combine(combiner, rows, epoch=3), [2 * low / (low + high), 2 * high / (low + high)])
    combiner.end_epoch(3, torch.tensor([0.25, 1.0]))  # both halve: r = (0.5, 0.5)
    close(combine(combiner, rows, epoch=4), [1.0, 1.0])


def adam_steps(gradients, lr):
    """torch.optim.Adam's defaults (betas 0.9, 0.999, eps 1e-8), by hand, for one scalar: the positions."""
    m = v = position = 0.0
    positions = []
    for step, gradient in enumerate(gradients, start=1):
        m = 0.9 * m + 0.1 * gradient
        v = 0.999 * v + 0.001 * gradient**2
        position -= lr * (m / (1 - 0.9**step)) / (math.sqrt(v / (1 - 0.999**step)) + 1e-8)
        positions.append(position)
    return positions


def test_gradnorm_two_task_case_worked_by_hand():
    """g1 = (3, 0), g2 = (0, 1), alpha = 1.5, lr = 0.025, w = (1, 1).

    Step 1, L = (2, 1) = L(0): r = (1, 1); G = (3, 1), target = G_bar = 2 for both: task 1 too strong,
    dL_grad/dw = (+||g1||, -||g2||) = (3, -1); Adam's first step is lr against the sign: w = (0.975, 1.025).
    Step 2, L = (1.8, 0.2): L~ = (0.9, 0.2), r = (0.9, 0.2) / 0.55 = (1.6364, 0.3636),
    r^1.5 = (2.0931, 0.2193); G = (2.925, 1.025), G_bar = 1.975, targets = (4.1339, 0.4331): now task 1
    is too weak, gradient (-3, +1). Adam: m = 0.9 (0.3, -0.1) + 0.1 (-3, 1) = (-0.03, 0.01),
    v = (0.017991, 0.001999); m^ = m / 0.19, v^ = v / 0.001999 = (9, 1); w1 = 0.975 + 0.025 * 0.03 / 0.19 / 3
    = 0.976316, w2 = 1.025 - 0.025 * 0.01 / 0.19 / 1 = 1.023684 (sum still 2).
    """
    combiner = make("gradnorm", 2)
    rows = [[3.0, 0.0], [0.0, 1.0]]
    close(combine(combiner, rows, losses=[2.0, 1.0]), [3.0, 1.0])
    close(combine(combiner, rows, losses=[1.8, 0.2]), [3 * 0.975, 1.025])
    w1 = 0.975 + 0.025 * (0.03 / 0.19) / 3
    w2 = 1.025 - 0.025 * (0.01 / 0.19) / 1
    close(combine(combiner, rows, losses=[1.8, 0.2]), [3 * w1, w2])
    close(torch.tensor([w1, w2]), [0.9763158, 1.0236842])
    # the same two weight trajectories, stepped by a plain hand-written Adam
    one, two = adam_steps([3.0, -3.0], 0.025), adam_steps([-1.0, 1.0], 0.025)
    close(torch.tensor([1 + one[1], 1 + two[1]]), [w1, w2])


def test_gradnorm_renormalises_the_weights_to_sum_to_the_number_of_tasks():
    """alpha = 0 (targets = G_bar): norms (3, 1, 1), G_bar = 5/3, gradient signs (+, -, -): Adam moves
    w to (0.975, 1.025, 1.025), sum 3.025, renormalised to 3: w * 3 / 3.025."""
    combiner = make("gradnorm", 3, gradnorm_alpha=0.0)
    rows = [[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    combine(combiner, rows)
    scale = 3 / 3.025
    close(combine(combiner, rows), [3 * 0.975 * scale, 1.025 * scale, 1.025 * scale])


def test_gradvac_moves_a_gradient_up_to_its_cosine_target():
    """Orthogonal g1 = (1, 0), g2 = (0, 1), targets 0.5: each g_i gains w g_j with
    w = 1 * (0.5 * 1 - 0 * sqrt(0.75)) / (1 * sqrt(0.75)) = 1 / sqrt(3), so cos(g_i', g_j) = 0.5;
    d = (1 + 1/sqrt(3), 1 + 1/sqrt(3)); the targets move to (1 - beta) 0.5 + beta 0 = 0.25 (beta = 0.5)."""
    combiner = make("gradvac", 2, gradvac_beta=0.5)
    combiner.cosine_targets.copy_(torch.tensor([[0.0, 0.5], [0.5, 0.0]]))
    direction = combine(combiner, [[1.0, 0.0], [0.0, 1.0]])
    close(direction, [1 + 1 / math.sqrt(3), 1 + 1 / math.sqrt(3)])
    close(combiner.cosine_targets, [[0.0, 0.25], [0.25, 0.0]])


def test_gradvac_first_step_is_pcgrad_and_it_agrees_with_torchjd_over_several_steps():
    close(combine(make("gradvac", 2), [[1.0, 0.0], [-1.0, 1.0]]), [0.5, 1.5])
    ours, reference = make("gradvac", 3, gradvac_beta=0.3), jd.GradVac(beta=0.3)
    generator = torch.Generator().manual_seed(7)
    for step in range(4):
        jacobian = torch.randn(3, 15, dtype=torch.float64, generator=generator)
        torch.manual_seed(100 + step)
        expected = reference(jacobian)
        torch.manual_seed(100 + step)
        close(combine(ours, jacobian), expected, tol=1e-7)


# ----------------------------------------------------------------------------------- checkpoints
def advance(combiner, name: str, generator: torch.Generator, steps: int) -> list[torch.Tensor]:
    outputs = []
    for step in range(steps):
        jacobian = torch.randn(3, 20, dtype=torch.float64, generator=generator)
        losses = torch.rand(3, dtype=torch.float64, generator=generator) + 0.5
        torch.manual_seed(step)  # GradVac's visiting order
        outputs.append(combiner.combine(jacobian, losses, 1))
        if name == "dwa":
            combiner.end_epoch(step + 1, losses)
    return outputs


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_gives_the_same_next_outputs(name):
    knobs = {"nash_mtl_update_weights_every": 2} if name == "nash_mtl" else {}
    trained = make(name, 3, **knobs)
    advance(trained, name, torch.Generator().manual_seed(0), steps=3)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = make(name, 3, **knobs)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    fresh = make(name, 3, **knobs)

    expected = advance(trained, name, torch.Generator().manual_seed(1), steps=2)
    actual = advance(restored, name, torch.Generator().manual_seed(1), steps=2)
    untrained = advance(fresh, name, torch.Generator().manual_seed(1), steps=2)
    for got, want in zip(actual, expected):
        close(got, want, tol=1e-7)
    assert not torch.allclose(untrained[0], expected[0]), "the state made no difference: the test is vacuous"
