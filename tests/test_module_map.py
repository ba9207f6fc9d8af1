"""benchmarks/module_map.py: orchestrator's internal import graph has no cycle, and the map finds
a cycle where there is one. Reads the sources with ast; imports nothing of them."""

from __future__ import annotations

from benchmarks import module_map


def test_the_import_graph_of_orchestrator_has_no_cycle_and_every_module_is_counted():
    found = module_map.module_map(None)
    assert found["cycles"] == [], found["cycles"]
    assert "orchestrator/runs.py" in found["lines"] and found["total_lines"] == sum(found["lines"].values())
    edges = {(e["from"], e["to"]) for e in found["edges"]}
    assert ("orchestrator.sweep", "orchestrator.runs") in edges  # the layers point down
    assert not any(a == "orchestrator.runs" for a, _ in edges - {("orchestrator.runs", "orchestrator.schema")})


def test_a_cycle_is_named():
    assert module_map.cycles({("a", "b"): False, ("b", "c"): True, ("c", "a"): False, ("c", "d"): False}) == [
        ["a", "b", "c"]]
