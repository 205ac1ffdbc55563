"""MO-ASHA rungs and stopping rule on hand-made result vectors (no training, no trials)."""

import enum

import numpy as np
import pytest
from optuna.study import StudyDirection

from nasopt.search.pruners.moasha import (
    MOASHA,
    Decision,
    epsilon_net_order,
    nondominated_ranks,
    priority_order,
    rung_levels,
    to_minimize,
)


def brute_force_fronts(points: np.ndarray) -> list[int]:
    """Peel Pareto fronts with plain Python loops, as an independent reference."""
    pts = [tuple(p) for p in points]
    ranks = [-1] * len(pts)
    front = 0
    while -1 in ranks:
        left = [i for i, r in enumerate(ranks) if r == -1]
        for i in left:
            dominated = any(
                all(a <= b for a, b in zip(pts[j], pts[i])) and any(a < b for a, b in zip(pts[j], pts[i])) for j in left
            )
            if not dominated:
                ranks[i] = front
        front += 1
    return ranks


def spread_front(rng: np.random.Generator, n: int, n_obj: int) -> np.ndarray:
    """n generic (tie-free) points, a mix of fronts."""
    return rng.random((n, n_obj))


# --- rung schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_epochs", "max_epochs", "eta", "expected"),
    [
        (1, 9, 3, [1, 3]),
        (1, 27, 3, [1, 3, 9]),
        (2, 20, 3, [2, 6, 18]),
        (1, 10, 2, [1, 2, 4, 8]),
        (1, 28, 3, [1, 3, 9, 27]),
        (5, 5, 3, []),
        (1, 3**5, 3, [1, 3, 9, 27, 81]),
    ],
)
def test_rung_levels(min_epochs, max_epochs, eta, expected):
    assert rung_levels(min_epochs, max_epochs, eta) == expected
    scheduler = MOASHA(min_epochs, max_epochs, eta)
    assert scheduler.levels == expected
    assert all(scheduler.is_rung(level) for level in expected)
    assert not scheduler.is_rung(max_epochs)


def test_default_reduction_factor_is_3():
    assert rung_levels(1, 27) == [1, 3, 9]
    assert MOASHA(1, 27).reduction_factor == 3


def test_is_rung_is_false_between_rungs():
    scheduler = MOASHA(2, 20)
    assert [e for e in range(0, 25) if scheduler.is_rung(e)] == [2, 6, 18]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 9, 3), "min_epochs must be >= 1"),
        ((-1, 9, 3), "min_epochs must be >= 1"),
        ((1, 9, 1), "reduction_factor must be >= 2"),
        ((1, 9, 0), "reduction_factor must be >= 2"),
        ((10, 9, 3), r"min_epochs \(10\) must be <= max_epochs \(9\)"),
        ((1.5, 9, 3), "min_epochs must be an integer"),
        ((1, 9, 2.5), "reduction_factor must be an integer"),
        ((True, 9, 3), "min_epochs must be an integer"),
        ((1, "9", 3), "max_epochs must be an integer"),
    ],
)
def test_invalid_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        rung_levels(*args)
    with pytest.raises(ValueError, match=message):
        MOASHA(*args)


def test_numpy_integers_are_accepted():
    assert MOASHA(np.int64(1), np.int32(9), np.int64(3)).levels == [1, 3]


# --- direction handling ----------------------------------------------------------------------------


class Direction(enum.Enum):  # stands in for any enum named like optuna's
    MINIMIZE = 1
    MAXIMIZE = 2


def test_to_minimize_negates_maximised_objectives():
    assert to_minimize([0.9, 1e5], ["maximize", "minimize"]).tolist() == [-0.9, 1e5]
    assert to_minimize([0.9, 1e5], ["MINIMIZE", "Maximize"]).tolist() == [0.9, -1e5]
    assert to_minimize((2, 3), [Direction.MAXIMIZE, Direction.MAXIMIZE]).tolist() == [-2.0, -3.0]
    values = to_minimize([0.8, 12.0], [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE])
    assert values.tolist() == [-0.8, 12.0]
    assert values.dtype == np.float64


@pytest.mark.parametrize(
    ("values", "directions", "message"),
    [
        ([1.0, 2.0], ["minimize"], "2 values but 1 directions"),
        ([1.0], ["minimise"], "direction must be"),
        ([1.0], [StudyDirection.NOT_SET], "direction must be"),
        ([1.0], [1], "direction must be"),
        ([[1.0]], ["minimize"], "one vector"),
        ([None], ["minimize"], "must be numbers"),
        ([np.nan, 1.0], ["minimize", "maximize"], "must be numbers"),
        (["a"], ["minimize"], "must be numbers"),
    ],
)
def test_to_minimize_rejects_bad_input(values, directions, message):
    with pytest.raises(ValueError, match=message):
        to_minimize(values, directions)


# --- non-dominated sorting -------------------------------------------------------------------------


def test_nondominated_ranks_known_2d_set():
    points = np.array([[1, 4], [2, 2], [4, 1], [3, 3], [5, 5], [2, 5]], dtype=float)
    assert nondominated_ranks(points).tolist() == [0, 0, 0, 1, 2, 1]


def test_nondominated_ranks_duplicates_share_a_front():
    points = np.array([[1, 1], [1, 1], [2, 2], [2, 2], [0, 3], [1, 2], [1, 3]], dtype=float)
    # [1, 2] is weakly worse than [1, 1] (equal first, worse second), so it is dominated; [1, 3] by [1, 2].
    assert nondominated_ranks(points).tolist() == [0, 0, 2, 2, 0, 1, 2]


def test_nondominated_ranks_three_objectives():
    points = np.array([[1, 2, 3], [3, 2, 1], [2, 2, 2], [2, 3, 3], [3, 3, 3], [4, 4, 4], [0, 9, 9]], dtype=float)
    assert nondominated_ranks(points).tolist() == [0, 0, 0, 1, 2, 3, 0]


def test_nondominated_ranks_edge_cases():
    assert nondominated_ranks(np.empty((0, 2))).tolist() == []
    assert nondominated_ranks(np.array([[3.0, 1.0]])).tolist() == [0]
    assert nondominated_ranks(np.array([[1.0], [3.0], [2.0], [1.0]])).tolist() == [0, 2, 1, 0]
    # +inf is just a very bad value; it does not break the comparison.
    assert nondominated_ranks(np.array([[0.0, np.inf], [1.0, 1.0], [2.0, np.inf]])).tolist() == [0, 0, 1]


@pytest.mark.parametrize("seed", range(20))
def test_nondominated_ranks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_obj = int(rng.integers(1, 4))
    # Small integers, so ties and duplicates are common.
    points = rng.integers(0, 4, size=(int(rng.integers(1, 25)), n_obj)).astype(float)
    assert nondominated_ranks(points).tolist() == brute_force_fronts(points)


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), np.array([[np.nan, 1.0]]), np.empty((3, 0))])
def test_nondominated_ranks_reject_bad_input(bad):
    with pytest.raises(ValueError):
        nondominated_ranks(bad)


# --- ordering within a front -----------------------------------------------------------------------

A, B, C, D, E = (0.0, 10.0), (10.0, 0.0), (5.0, 5.0), (5.1, 4.9), (2.0, 8.0)


def test_epsilon_net_prefers_spread_within_a_front():
    # All five are mutually non-dominated; D is a near-duplicate of C and listed before it.
    points = np.array([D, E, C, B, A])
    assert nondominated_ranks(points).tolist() == [0] * 5
    order = [tuple(points[i]) for i in priority_order(points)]
    # Both extremes, then the middle, then E which fills the gap, and the near-duplicate last.
    assert order == [A, B, C, E, D]


def test_epsilon_net_seed_and_ties_follow_index_order():
    # Seed: the lowest first coordinate, the earlier of two equal ones; then 4.0 is farthest, then 2.0.
    assert epsilon_net_order(np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 0.0]])).tolist() == [1, 3, 0, 2]
    # After the seed and (2, 0), indices 1 and 2 are both sqrt(2) from their nearest pick: lower index first.
    assert epsilon_net_order(np.array([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0], [2.0, 0.0]])).tolist() == [0, 3, 1, 2]
    assert epsilon_net_order(np.array([[0.0, 0.0], [1.0, -1.0], [1.0, 1.0], [2.0, 0.0]])).tolist() == [0, 3, 1, 2]
    assert epsilon_net_order(np.empty((0, 2))).tolist() == []


@pytest.mark.parametrize("seed", range(10))
def test_priority_order_ignores_the_units_of_each_objective(seed):
    rng = np.random.default_rng(seed)
    # A single front with uneven spacing: loss against a parameter count in the millions.
    loss = np.sort(rng.random(12))
    params = np.sort(rng.random(12))[::-1]
    unit = np.column_stack([loss, params])
    scaled = np.column_stack([loss * 0.01 + 0.3, params * 4e6 + 1e5])
    assert priority_order(scaled).tolist() == priority_order(unit).tolist()


@pytest.mark.parametrize("seed", range(10))
def test_priority_order_is_fronts_first(seed):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 5, size=(30, 2)).astype(float)
    order = priority_order(points)
    assert sorted(order.tolist()) == list(range(30))
    fronts = nondominated_ranks(points)[order]
    assert (np.diff(fronts) >= 0).all()


# --- the stopping rule -----------------------------------------------------------------------------


def front_line(n: int = 11) -> list[tuple[float, float]]:
    return [(float(i), float(n - 1 - i)) for i in range(n)]


def test_a_dominated_point_among_many_stops():
    others = front_line()
    decision = MOASHA(1, 27).decide((9.0, 9.0), others)
    assert decision == Decision(
        keep_going=False,
        rank=11,
        n=12,
        reason="ranked 12th of 12 (Pareto front 1): stopped, the top 5 go on",
    )


@pytest.mark.parametrize("mine", [(-1.0, 20.0), (20.0, -1.0)])
def test_a_non_dominated_extreme_continues(mine):
    others = front_line() + [(9.0, 9.0), (12.0, 12.0), (5.0, 7.0)]
    decision = MOASHA(1, 27).decide(mine, others)
    assert decision.keep_going
    # The extremes are the first two picks of the net: lowest first objective, then the farthest from it.
    assert decision.rank == (0 if mine[0] < 0 else 1)
    assert decision.n == len(others) + 1


def test_a_non_dominated_but_crowded_point_can_stop():
    # Being on the front is not enough when the front alone is larger than the kept share.
    others = front_line()
    decision = MOASHA(1, 27).decide((5.05, 4.95), others)
    assert nondominated_ranks(np.array([*others, (5.05, 4.95)]))[-1] == 0
    assert not decision.keep_going


def test_first_arrival_continues_whatever_it_scored():
    decision = MOASHA(1, 27).decide((1e9, 1e9), [])
    assert decision == Decision(True, 0, 1, "first result, so it continues (nothing to compare with yet)")
    assert MOASHA(1, 27).decide((1e9, 1e9), np.empty((0, 2))).keep_going


def test_second_arrival_continues_only_when_ahead_with_eta_3():
    scheduler = MOASHA(1, 27, 3)
    assert scheduler.decide((2.0, 2.0), [(1.0, 1.0)]).keep_going is False  # 1 / 2 > 1 / 3
    assert scheduler.decide((0.0, 0.0), [(1.0, 1.0)]).keep_going is True
    # With eta = 2 the second place of two is still within rank / n <= 1 / 2.
    assert MOASHA(1, 27, 2).decide((2.0, 2.0), [(1.0, 1.0)]).keep_going is True


def test_matches_syne_tune_bracket_example():
    # Syne Tune's test_bucket: eta = 2, results 2, 0, 3 arrive in turn -> continue, continue, stop.
    scheduler = MOASHA(1, 10, 2)
    assert scheduler.decide([2.0], []).keep_going
    assert scheduler.decide([0.0], [[2.0]]).keep_going
    assert not scheduler.decide([3.0], [[2.0], [0.0]]).keep_going


@pytest.mark.parametrize("eta", [2, 3, 4])
@pytest.mark.parametrize("n_obj", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8, 9, 10, 17, 27, 30])
def test_exactly_n_over_eta_plus_one_continue(n, n_obj, eta):
    rng = np.random.default_rng(1000 * n + 10 * n_obj + eta)
    points = spread_front(rng, n, n_obj)
    scheduler = MOASHA(1, 100, eta)
    kept = []
    for i in range(n):
        decision = scheduler.decide(points[i], np.delete(points, i, axis=0))
        assert decision.n == n
        if decision.keep_going:
            kept.append(i)
    assert len(kept) == n // eta + 1 == scheduler.n_kept(n)
    # And they are exactly the head of the rung's order.
    assert sorted(kept) == sorted(priority_order(points)[: n // eta + 1].tolist())


def test_mine_ranks_behind_an_identical_earlier_result():
    scheduler = MOASHA(1, 27, 3)
    decision = scheduler.decide((1.0, 1.0), [(1.0, 1.0)])
    assert (decision.rank, decision.keep_going) == (1, False)
    # Same when mine duplicates the result that would otherwise be picked first within its front.
    decision = scheduler.decide((0.0, 5.0), [(3.0, 3.0), (0.0, 5.0), (5.0, 0.0)])
    assert decision.rank == 3


def test_reason_names_epoch_rank_front_and_cutoff():
    scheduler = MOASHA(1, 27, 3)
    others = front_line(8)
    stop = scheduler.decide((6.0, 6.0), others, epoch=3)
    assert stop.reason == "ranked 9th of 9 (Pareto front 1) at epoch 3: stopped, the top 4 go on"
    go = scheduler.decide((-1.0, 8.0), others, epoch=9)
    assert go.reason == "ranked 1st of 9 (Pareto front 0) at epoch 9: continues, the top 4 go on"
    assert scheduler.decide((0.0, 0.0), [], epoch=1).reason.startswith("first result at epoch 1,")


def test_reason_ordinals():
    scheduler = MOASHA(1, 27, 2)
    # A chain where each point dominates the next: the rank is the position in the chain.
    chain = [(float(i), float(i)) for i in range(30)]
    words = {}
    for position in [1, 2, 3, 4, 11, 12, 13, 21, 22, 23]:
        mine = chain[position - 1]
        others = chain[: position - 1] + chain[position:]
        words[position] = scheduler.decide(mine, others).reason.split(" of ")[0]
    assert words == {
        1: "ranked 1st",
        2: "ranked 2nd",
        3: "ranked 3rd",
        4: "ranked 4th",
        11: "ranked 11th",
        12: "ranked 12th",
        13: "ranked 13th",
        21: "ranked 21st",
        22: "ranked 22nd",
        23: "ranked 23rd",
    }


@pytest.mark.parametrize(
    ("mine", "others", "epoch", "message"),
    [
        ((1.0, 2.0), [(1.0, 2.0, 3.0)], None, "mine has 2 objectives but others have 3"),
        ((1.0, 2.0), [(1.0,)], None, "mine has 2 objectives but others have 1"),
        ((), [], None, "non-empty vector"),
        ((np.nan, 1.0), [(1.0, 1.0)], None, "NaN"),
        ((1.0, 1.0), [(np.inf, 1.0)], None, "finite"),
        ((1.0, 1.0), [(1.0, 1.0)], 2, "epoch 2 is not a rung"),
        ((1.0, 1.0), [(1.0, 1.0)], 27, "epoch 27 is not a rung"),
    ],
)
def test_decide_rejects_bad_input(mine, others, epoch, message):
    with pytest.raises(ValueError, match=message):
        MOASHA(1, 27, 3).decide(mine, others, epoch=epoch)
