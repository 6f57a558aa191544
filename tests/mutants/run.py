"""`make mutants`: the standing mutation check of the guarantees the README promises.

Every mutant in mutants.toml is one deliberate, guarantee-breaking edit of the source (an exact
snippet and its replacement, never a line number) together with the tests that must catch it. For
each mutant this script copies the repository (the files git knows, committed or not) into a scratch
directory, applies the edit, and runs only that mutant's tests there:

    python -m pytest -x -q -p no:cacheprovider TESTS...      (PYTHONPATH = the scratch copy)

A mutant is *killed* when a test fails, *survived* when they all pass. With --repeat N a mutant
must be killed in every one of the N runs: a test that catches it only sometimes does not count.
Before any mutant, the listed tests run once on the unmodified copy (they must pass there, or every
mutant would look killed). A snippet that is no longer found exactly once stops everything, naming
the mutant, so whoever changed that code re-anchors it.

Exit status: 0 every mutant killed; 1 a mutant survived, or its tests could not run; 2 the catalog
needs fixing (a snippet not found, a bad entry) or the tests fail without any mutant.
A run of the whole catalog rewrites the result table in tests/MUTANTS.md.

    python tests/mutants/run.py                    # everything, once
    python tests/mutants/run.py --only NAME -r 3   # one mutant, three times
    python tests/mutants/run.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOG = Path(__file__).with_name("mutants.toml")
TABLE = ROOT / "tests" / "MUTANTS.md"
BEGIN, END = "<!-- mutants:begin -->", "<!-- mutants:end -->"
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


class CatalogError(Exception):
    """mutants.toml needs fixing: a snippet no longer found exactly once, or a malformed entry."""


@dataclass(frozen=True)
class Edit:
    file: str
    find: str
    replace: str


@dataclass(frozen=True)
class Mutant:
    name: str
    promise: str
    breaks: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]
    equivalent: str | None = None  # why no test can tell it from the real code: run only with --equivalent


@dataclass
class Outcome:
    mutant: Mutant
    result: str  # killed | survived | error | equivalent
    seconds: float = 0.0
    runs: int = 0
    killed_in: int = 0
    killer: str = ""
    detail: str = ""


# ------------------------------------------------------------------------------------ catalog


def load_catalog(path: Path = CATALOG) -> list[Mutant]:
    raw = tomllib.loads(path.read_text())
    mutants: list[Mutant] = []
    for n, entry in enumerate(raw.get("mutant", []), start=1):
        name = entry.get("name") or f"#{n}"
        missing = [k for k in ("name", "promise", "breaks", "tests", "edit") if not entry.get(k)]
        if missing:
            raise CatalogError(f"mutant {name}: missing {', '.join(missing)}")
        edits = tuple(Edit(e["file"], e["find"], e["replace"]) for e in entry["edit"])
        if any(e.find == e.replace for e in edits):
            raise CatalogError(f"mutant {name}: an edit replaces a snippet with itself")
        mutants.append(Mutant(name, entry["promise"], entry["breaks"], edits, tuple(entry["tests"]), entry.get("equivalent")))
    names = [m.name for m in mutants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CatalogError(f"mutant names used twice: {', '.join(twice)}")
    return mutants


def anchor_problems(mutants: list[Mutant], root: Path, catalog: Path = CATALOG) -> list[str]:
    """Every snippet must occur exactly once in its file, or the mutant would edit the wrong code."""
    problems = []
    for mutant in mutants:
        for edit in mutant.edits:
            path = root / edit.file
            if not path.is_file():
                problems.append(f"mutant {mutant.name}: {edit.file} does not exist")
                continue
            found = path.read_text().count(edit.find)
            if found != 1:
                first = edit.find.strip().splitlines()[0] if edit.find.strip() else edit.find
                problems.append(
                    f"mutant {mutant.name}: snippet found {found} times in {edit.file} (must be exactly once);"
                    f" re-anchor it in {catalog}: {first!r}"
                )
    return problems


# ------------------------------------------------------------------------------------ scratch copies


def repository_files(root: Path) -> list[str]:
    """Tracked files and new ones git would add (the tests being written count too), not ignored ones."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"mutants: cannot list the repository's files with git ({exc}); run from a git checkout")
    return sorted({f for f in listed.split("\0") if f and (root / f).is_file()})


def copy_repository(root: Path, files: list[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def apply(mutant: Mutant, dest: Path) -> None:
    for edit in mutant.edits:
        path = dest / edit.file
        text = path.read_text()
        if text.count(edit.find) != 1:
            raise CatalogError(f"mutant {mutant.name}: snippet not found exactly once in {edit.file}")
        mutated = text.replace(edit.find, edit.replace)
        try:
            compile(mutated, str(path), "exec")
        except SyntaxError as exc:
            raise CatalogError(f"mutant {mutant.name}: the edit leaves {edit.file} invalid: {exc}") from None
        path.write_text(mutated)


def test_env(dest: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(dest)  # the scratch copy, never the checkout (or an editable install)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_resolve_to(dest: Path) -> None:
    probe = "import migrator, mappings, tests.conftest; print(migrator.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=dest, env=test_env(dest), capture_output=True, text=True)
    where = Path(out.stdout.strip() or "?").resolve()
    if out.returncode != 0 or dest.resolve() not in where.parents:
        sys.exit(f"mutants: the scratch copy's code is not the code imported ({where}): {out.stderr[-500:]}")


def run_pytest(dest: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str, float]:
    """(pytest's exit code or None on timeout, its output, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *PYTEST, *tests], cwd=dest, env=test_env(dest),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pytest we started and the CLI runs it started
        out, _ = proc.communicate()
        code = None
    except BaseException:
        # Ctrl-C reaches only us (the tests run in a session of their own): take them down too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return code, out, time.monotonic() - started


# ------------------------------------------------------------------------------------ running


def run_mutant(mutant: Mutant, pristine: Path, work: Path, repeat: int, timeout: float, show: bool = False) -> Outcome:
    outcome = Outcome(mutant, "killed")
    for _ in range(repeat):
        dest = work / mutant.name
        shutil.copytree(pristine, dest)
        try:
            apply(mutant, dest)
            code, out, seconds = run_pytest(dest, mutant.tests, timeout)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        outcome.runs += 1
        outcome.seconds += seconds
        if show:
            print(out.rstrip()[-4000:], flush=True)
        if code == 1:
            outcome.killed_in += 1
            found = FAILED_LINE.search(out)
            outcome.killer = found.group(1) if found else "(a test failed)"
        elif code is None:
            outcome.killed_in += 1
            outcome.killer = f"(timed out after {timeout:g}s)"
        elif code == 0:
            outcome.result = "survived"
            break  # caught only sometimes counts as surviving: no need to go on
        else:
            outcome.result, outcome.detail = "error", f"pytest exit code {code}: {out.strip()[-1500:]}"
            break
    return outcome


def describe(o: Outcome) -> str:
    if o.result == "killed":
        return f"killed {o.killed_in}/{o.runs} by {o.killer}"
    if o.result == "survived":
        return f"SURVIVED (killed in {o.killed_in} of {o.runs} runs)"
    if o.result == "equivalent":
        return f"equivalent ({'survived, as expected' if o.runs else 'not run'}): {o.mutant.equivalent}"
    return f"ERROR: {o.detail}"


def write_table(outcomes: list[Outcome], repeat: int, seconds: float) -> None:
    killed = sum(o.result == "killed" for o in outcomes)
    run = sum(o.result != "equivalent" for o in outcomes)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        BEGIN,
        f"Last full run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on commit {commit} (plus uncommitted changes, if any),"
        f" `--repeat {repeat}`: **{killed} of {run} mutants killed** in {seconds:.0f} s.",
        "",
        "| mutant | promise | the edit breaks | result | killed by | seconds (all runs) |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        edited = ", ".join(sorted({e.file for e in o.mutant.edits}))
        result = {"killed": f"killed {o.killed_in}/{o.runs}", "survived": "**SURVIVED**", "error": "**ERROR**"}.get(
            o.result, "equivalent (not run)"
        )
        killer = f"`{o.killer}`" if o.result == "killed" else (o.mutant.equivalent or o.detail[:200]).replace("|", "\\|")
        lines.append(
            f"| `{o.mutant.name}` | {o.mutant.promise} | {o.mutant.breaks} (`{edited}`) | {result} | {killer} |"
            f" {o.seconds:.1f} |"
        )
    lines.append(END)
    text = TABLE.read_text() if TABLE.exists() else f"# Mutation check\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    TABLE.write_text(head + "\n".join(lines) + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant only (repeatable, or a,b,c)")
    parser.add_argument("--repeat", "-r", type=int, default=1, metavar="N", help="runs per mutant; each must kill it")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds per pytest run")
    parser.add_argument("--equivalent", action="store_true", help="also run the mutants marked equivalent")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated copy")
    parser.add_argument("--show", action="store_true", help="print pytest's output for every mutant run")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--catalog", type=Path, default=CATALOG, help=argparse.SUPPRESS)  # to test the runner
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    try:
        catalog = load_catalog(args.catalog)
    except (CatalogError, KeyError, tomllib.TOMLDecodeError) as exc:
        print(f"mutants: {args.catalog}: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for m in catalog:
            print(f"{m.name:34} {m.promise:28} {'(equivalent) ' if m.equivalent else ''}{m.breaks}")
        return 0
    chosen = catalog
    if args.only:
        wanted = [n for item in args.only for n in item.split(",") if n]
        unknown = sorted(set(wanted) - {m.name for m in catalog})
        if unknown:
            print(f"mutants: no mutant named {', '.join(unknown)} (see --list)", file=sys.stderr)
            return 2
        chosen = [m for m in catalog if m.name in wanted]
    problems = anchor_problems(chosen, ROOT, args.catalog)
    if problems:
        print("mutants: the catalog no longer matches the code:", *problems, sep="\n  ", file=sys.stderr)
        return 2

    started = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="migrator-mutants-") as scratch:
        pristine, work = Path(scratch) / "pristine", Path(scratch) / "work"
        work.mkdir()
        copy_repository(ROOT, repository_files(ROOT), pristine)
        check_imports_resolve_to(pristine)
        runnable = [m for m in chosen if args.equivalent or not m.equivalent]
        if runnable and not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in runnable for t in m.tests))
            print(f"baseline: {len(tests)} tests on the unmutated copy ...", flush=True)
            code, out, seconds = run_pytest(pristine, tests, args.timeout)
            if code != 0:
                print(out[-3000:], file=sys.stderr)
                print(f"mutants: the listed tests fail without any mutant (exit {code}); fix them first", file=sys.stderr)
                return 2
            print(f"baseline: passed in {seconds:.1f}s", flush=True)
        for n, mutant in enumerate(chosen, start=1):
            if mutant not in runnable:
                outcome = Outcome(mutant, "equivalent")
            else:
                outcome = run_mutant(mutant, pristine, work, args.repeat, args.timeout, args.show)
                if mutant.equivalent and outcome.result == "survived":
                    outcome.result = "equivalent"  # as expected: no test can tell it from the real code
            outcomes.append(outcome)
            print(f"[{n}/{len(chosen)}] {mutant.name}: {describe(outcome)} ({outcome.seconds:.1f}s)", flush=True)

    total = time.monotonic() - started
    if chosen == catalog and args.catalog == CATALOG:
        write_table(outcomes, args.repeat, total)
    bad = [o for o in outcomes if o.result in ("survived", "error")]
    killed = sum(o.result == "killed" for o in outcomes)
    print(f"{killed} killed, {len(bad)} not, {len(outcomes) - killed - len(bad)} equivalent; {total:.0f}s")
    if bad:
        print("mutants: not killed: " + ", ".join(f"{o.mutant.name} ({o.result})" for o in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("\nmutants: interrupted; nothing was written")
