"""`orchestrate archs`: the zoo as a table, or a block an arch with -l; counted on the meta device."""

from __future__ import annotations

import archs
from orchestrator import cli


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["archs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_archs_lists_every_arch_with_family_parameters_and_knobs_and_no_flops_unless_asked(capsys):
    code, out, _ = run(capsys)
    header, rule, *rows = out.splitlines()
    assert code == 0 and header.split()[:3] == ["arch", "family", "params"] and "FLOPs" not in header
    assert [row.split()[0] for row in rows] == archs.names()
    assert rows[archs.names().index("resnet18")].split()[:3] == ["resnet18", "ResNet", "11.17M"]


def test_archs_flops_adds_the_forward_flops_of_one_32x32_image(capsys):
    code, out, _ = run(capsys, "--flops", "resnet18")
    header, _, row = out.splitlines()
    assert code == 0 and header.split()[:4] == ["arch", "family", "params", "FLOPs"]
    assert row.split()[:4] == ["resnet18", "ResNet", "11.17M", "1111M"]


def test_archs_long_shows_each_archs_paper_and_what_each_knob_means(capsys):
    code, out, _ = run(capsys, "-l", "shufflenet_v1")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "shufflenet_v1  (ShuffleNet)  0.91M params"
    assert lines[1] == "  paper: " + archs.get("shufflenet_v1").paper
    assert lines[2].split() == ["groups", "=", "3", "one", "of", "1,", "2,", "3,", "4,", "8", "g:", "groups",
                                "of", "the", "1x1", "convs"]
    assert lines[3].split()[:3] == ["width", "=", "1.0"] and lines[3].endswith("scale factor s: channels x s")
    assert lines[4] == "  smallest: groups=3  width=0.25"


def test_archs_no_count_lists_without_building_anything(capsys):
    code, out, _ = run(capsys, "--no-count", "vgg*")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["arch", "family", "knobs"]
    assert [row.split()[0] for row in out.splitlines()[2:]] == ["vgg11", "vgg13", "vgg16", "vgg19"]


def test_archs_rejects_a_pattern_that_matches_nothing_and_flops_with_no_count(capsys):
    code, out, err = run(capsys, "resnet17*")
    assert (code, out) == (2, "") and err.startswith("archs: no arch matches 'resnet17*'; known: alexnet, ")
    code, out, err = run(capsys, "--flops", "--no-count")
    assert (code, out) == (2, "") and "argument --no-count: not allowed with argument --flops" in err
    assert len(err.splitlines()) == 1
