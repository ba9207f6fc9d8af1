"""Counts the end-to-end sweeps in tests/: the places in a test or a fixture that start a real
`orchestrate sweep` (Ray started, trials trained), by grep and the enclosing function.

A place is a line of a test function (`test_*`) or a fixture (`@pytest.fixture`) that calls one of
the sweep launchers -- support's run_sweep / start_sweep / sweep_through, the multi-node modules'
cluster.sweep / start_sweep_on / run_sweep(cluster, ...), a helper of the test's own module that
calls one of these (one level: e.g. test_budget_extend's sweep_cli), or `orchestrate sweep` itself through
run_cli, Popen, a Ray job's submit, `orchestrate submit` or the in-process cli.main -- and is not a
--dry-run. A resume (`--resume`, or the printed resume command run again) is a sweep of its own.
Refusals start no Ray and are left out: support.refused and the argv built for it, a bad file
handed to a job (`bad`), an in-process cli.main in a function that asserts exit code 2, a test
named as a refusal. A place
counts once, however many tests read its fixture; a parametrized test's place counts once per
parameter (the 'executions' column).

    python benchmarks/count_sweeps.py [REV]     # REV: a git revision; default the working tree
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

LAUNCH = re.compile(r'\brun_sweep\(|\bstart_sweep\(|\bsweep_through\(|\bstart_sweep_on\(|_cluster\.sweep\(|'
                    r'\.submit\([^)]*"sweep"|\.orchestrate\("submit"|\["sweep",|"orchestrator", "sweep"|'
                    r'shlex\.split\(command\)|run_cli\(command\[1:\]')
# A refusal starts no Ray: support.refused, a bad file handed to a job, an in-process run asserted to exit 2.
REFUSAL = re.compile(r'\brefused\(|^\s*(bad|argv) = |\(bad,')


def sources(rev: str | None) -> dict[str, str]:
    if rev is None:
        import glob

        return {p: open(p).read() for p in sorted(glob.glob("tests/*.py"))}
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "tests/"], capture_output=True, text=True,
                           check=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], capture_output=True, text=True, check=True).stdout
            for n in names if n.endswith(".py")}


def params(func: ast.FunctionDef) -> int:
    n = 1
    for deco in func.decorator_list:
        if isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("parametrize") and len(deco.args) > 1:
            try:
                n *= len(ast.literal_eval(deco.args[1]))
            except ValueError:
                n *= len(deco.args[1].elts) if isinstance(deco.args[1], (ast.List, ast.Tuple)) else 1
    return n


def launches(launch: re.Pattern, line: str, body: str) -> bool:
    if REFUSAL.search(line) or ("cli.main(" in line and re.search(r"\bcode == 2\b|\) == 2\b", body)):
        return False
    return bool(launch.search(line)) and "--dry-run" not in line and not line.lstrip().startswith("#")


def helpers(tree: ast.AST, lines: list[str]) -> set[str]:
    """The module's own helper functions (neither a test nor a fixture) that launch a sweep."""
    found = set()
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef) and not func.name.startswith("test_") and func.name != "refused" \
                and not any("fixture" in ast.unparse(d) for d in func.decorator_list):
            body = lines[func.body[0].lineno - 1:func.end_lineno]
            if any(launches(LAUNCH, line, "\n".join(body)) for line in body):
                found.add(func.name)
    return found


def places(path: str, text: str):
    lines = text.splitlines()
    tree = ast.parse(text)
    own = helpers(tree, lines) - {"run_sweep", "start_sweep", "sweep_through", "start_sweep_on", "start", "sweep"}
    launch = re.compile(LAUNCH.pattern + "".join(rf"|\b{name}\(" for name in sorted(own)))
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef):
            continue
        fixture = any("fixture" in ast.unparse(d) for d in func.decorator_list)
        if not (func.name.startswith("test_") or fixture) or "refused" in func.name or "rejects" in func.name:
            continue  # a test named as a refusal starts no sweep
        body = "\n".join(lines[func.lineno - 1:func.end_lineno])
        for number in range(func.body[0].lineno, func.end_lineno + 1):
            line = lines[number - 1]
            if launches(launch, line, body):
                yield path, number, func.name, params(func), line.strip()[:100]


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    found = [p for path, text in sources(rev).items() for p in places(path, text)]
    for path, number, name, n, line in found:
        print(f"{path}:{number} {name} x{n}: {line}")
    print(f"{len(found)} places, {sum(p[3] for p in found)} executions ({rev or 'working tree'})")


if __name__ == "__main__":
    main()
