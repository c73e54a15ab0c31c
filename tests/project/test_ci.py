"""The suite's own rule: under CI (CI=true) a test that would skip fails the run instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import pytest

pytestmark = pytest.mark.skipif(True, reason="no browser on this machine")

def test_needs_a_browser():
    pass
"""


def run_probe(tmp_path, ci: str) -> subprocess.CompletedProcess:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", str(probe)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_skip_fails_the_run_under_ci(tmp_path):
    result = run_probe(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    assert "skipped under CI=true" in result.stdout and "no browser on this machine" in result.stdout


def test_a_skip_is_a_skip_elsewhere(tmp_path):
    result = run_probe(tmp_path, "")
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout


def _upper_time_bounds(function) -> list[str]:
    """Comparisons `<timed> < bound` (or <=) in a test: a time measured, held under a ceiling."""
    import ast

    timed = ("elapsed", "monotonic() - start", "duration", "busy", "latency", "spec)")
    found = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for left, op in zip(operands, node.ops, strict=False):
            text = ast.unparse(left)
            if isinstance(op, (ast.Lt, ast.LtE)) and any(w in text for w in timed) and "deadline" not in text:
                found.append(ast.unparse(node))
    return found


def test_every_test_with_an_upper_time_bound_is_marked_timing():
    """A test that asserts how long something took carries @pytest.mark.timing (pyproject.toml), so
    the bounds can be found, reviewed and run alone; each says why its margin holds."""
    import ast

    unmarked, marked = [], 0
    for path in sorted(Path(__file__).parents[1].rglob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            bounds = _upper_time_bounds(node)
            is_marked = any("mark.timing" in ast.unparse(d) for d in node.decorator_list)
            marked += bool(bounds and is_marked)
            if bounds and not is_marked:
                unmarked.append(f"{path.name}::{node.name}: {bounds[0]}")
    assert not unmarked, unmarked
    assert marked >= 10  # the observer sees the bounds (there are more than ten)


def test_every_mutation_names_text_the_source_holds_exactly_once():
    """`make mutations` replaces exact text; an anchor that no longer matches would make its mutation
    a no-op that fails for the wrong reason (or none). Checked here, in seconds, on every run."""
    from tests.mutations import MUTATIONS, ROOT

    stale = []
    for mutation in MUTATIONS:
        anchors = [(mutation.path, mutation.old)]
        anchors += [(a[0], a[1]) if len(a) == 3 else (mutation.path, a[0]) for a in mutation.also]
        for path, old in anchors:
            found = (ROOT / path).read_text().count(old)
            if found != 1:
                stale.append(f"{mutation.guarantee}: {path} holds its text {found} times")
    assert not stale, stale
    assert all(m.tests for m in MUTATIONS)


def test_the_tests_mirror_the_package():
    """A test module lives in the folder of the package part it tests (tests/db/ for
    swagger_server/db/, ...), or in deploy/ (the shipped deployment) or project/ (the whole: docs,
    layering, the contract); none at the top, where modules used to pile up by date."""
    tests = Path(__file__).resolve().parents[1]
    package = tests.parent / "swagger_server"
    assert not sorted(p.name for p in tests.glob("test_*.py"))
    folders = {p.parent.name for p in tests.rglob("test_*.py")}
    assert folders - {"deploy", "project"} <= {p.name for p in package.iterdir() if p.is_dir()}, folders
    assert len(folders) >= 5


def test_every_sleep_in_the_tests_says_it_is_not_a_poll():
    """Polls go through harness.waiting.wait_until; a bare sleep is time passing, pacing or a settle,
    and says so on its line (a sleep that waits for something to happen is a flaky test)."""
    tests = Path(__file__).resolve().parents[1]
    bare, seen = [], 0
    for path in tests.rglob("*.py"):
        if path.name == "mutations.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "time.sleep(" in line and '"time.sleep("' not in line:
                seen += 1
                if "#" not in line:
                    bare.append(f"{path.relative_to(tests)}:{number}")
    assert seen >= 20  # the observer sees them
    assert not bare, bare


def test_a_mutation_that_proves_nothing_is_not_reported_as_survived():
    """A mutation whose text is gone is STALE (update the mutation), one whose mutant cannot even be
    loaded is BROKEN (a syntax error proves nothing): neither reads as "SURVIVED", which sends one
    looking for a missing test. The observer: a real mutation is caught."""
    import sys

    from tests.mutations import MUTATIONS, Mutation, run

    test = "tests/db/test_unicode_version.py::test_the_rule_is_unicode_16_whatever_python_runs_it"
    stale = Mutation("stale", "swagger_server/text.py", "text that is in no file 4711", "", (test,))
    broken = Mutation(
        "broken", "swagger_server/text.py", "import unicodedata2 as ucd\n", "import unicodedata2 as ucd\n)\n", (test,)
    )
    assert run(stale, sys.executable)[0] == "STALE"
    assert run(broken, sys.executable)[0] == "BROKEN"
    real = next(m for m in MUTATIONS if m.guarantee.startswith("one Unicode version governs"))
    assert run(real, sys.executable)[0] == "caught"
