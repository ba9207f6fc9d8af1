"""orchestrator/spaces.py: the one walk over a nested search space, and what is built on it. Pure
functions, no Ray (a sweep's search through them is test_search.py's; their refusals are
test_config_errors.py's)."""

from __future__ import annotations

from orchestrator import spaces

SPACE = {"arch": "resnet18", "knobs": {"width": {"grid": [1, 2]}, "act": {"choice": ["relu", "gelu"]}, "none": {}},
         "lr": {"loguniform": [0.001, 0.1]}, "epochs": {"grid": [3, 4, 5]}}


def test_leaves_are_literals_and_spaces_by_path_in_file_order():
    assert list(spaces.leaves(SPACE)) == [("arch",), ("knobs", "width"), ("knobs", "act"), ("lr",), ("epochs",)]
    assert spaces.grid_size(SPACE) == 6 and spaces.grid_size({"lr": 0.1}) == 1
    assert list(spaces.sampled(SPACE)) == [("knobs", "act"), ("lr",)]
    assert spaces.show_path(("knobs", "width")) == "knobs.width"


def test_grid_points_vary_the_last_grid_leaf_fastest_and_keep_the_rest_as_it_is():
    points = spaces.grid_points(SPACE)
    assert [(p["knobs"]["width"], p["epochs"]) for p in points] == [(1, 3), (1, 4), (1, 5), (2, 3), (2, 4), (2, 5)]
    assert all(p["knobs"]["act"] == {"choice": ["relu", "gelu"]} and p["knobs"]["none"] == {} for p in points)
    assert SPACE["knobs"]["width"] == {"grid": [1, 2]}  # the space itself is left as it was
    assert spaces.grid_points({"lr": {"grid": []}}) == []
