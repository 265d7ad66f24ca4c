"""ruff is clean on the whole tree; mypy --strict is clean on the codecs and sans-IO cores.

pyproject.toml sets ``strict = true`` for ``pxestack.wire``, ``pxestack.dhcp``,
``pxestack.tftp``, ``pxestack.http.ipxe``, ``pxestack.paths``, ``pxestack.errors`` and
``pxestack._types`` (with the mypy-zope plugin for Twisted's interfaces).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRICT_TARGETS = [
    "pxestack/wire", "pxestack/dhcp", "pxestack/tftp", "pxestack/http/ipxe.py",
    "pxestack/paths.py", "pxestack/errors.py", "pxestack/_types.py", "pxestack/explain.py",
    "pxestack/bootevents.py",
]


@pytest.mark.slow
def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pxestack", "pxestack_syslog",
         "pxestack_webhooks", "tests", "benchmarks", "examples", "dev.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean_on_codecs_and_cores() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *STRICT_TARGETS],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the repository stands on its own -------------------------------------------------------
#
# Comments and docs give the reason for a choice in place, or point at a file a reader of the
# repository can open (docs/reference/ for outside facts, docs/history/ for how a number was
# reached).  They do not cite documents outside the repository, nor work history (issue and
# round numbers), nor numbered items of an outside list.

#: What a reader of the repository cannot open or look up.
FORBIDDEN_CITATIONS = (
    re.compile(r"bad-inputs"),
    re.compile(r"(?<!reference/)firmware\.md"),
    re.compile(r"baselines\.md"),
    re.compile(r"(?<!reference/)mayu\.md"),
    re.compile(r"shared/reference"),
    re.compile(r"ARCHITECTURE\.md"),
    re.compile(r"STYLE\.md"),
    re.compile(r"\b[Rr]ound [0-9]+\b"),
    re.compile(r"\b[Ii]ssue [0-9]+\b"),
    re.compile(r"\b[Qq]uirk [0-9]+\b"),
)

#: Where the rule applies: directories (searched recursively) and single files.  docs/history/
#: is the one place where work history belongs.
CITATION_SCOPE = ("pxestack", "pxestack_syslog", "pxestack_webhooks", "docs", "examples",
                  "tests", "benchmarks", "README.md", "dev.py")
CITATION_EXEMPT_DIRS = ("docs/history",)
#: This file holds the forbidden patterns themselves, so it would always flag itself.
CITATION_EXEMPT_FILES = ("tests/test_static_checks.py",)
#: Golden data is frozen byte for byte; of it only the "_comment" strings of its JSON files are
#: prose that may (and must) be kept free of citations.  Other golden files are not scanned.
GOLDEN_DIR = "tests/golden"
TEXT_SUFFIXES = {".py", ".md", ".j2", ".yaml", ".yml", ".sh", ".tac", ".txt", ".toml", ".cfg",
                 ".ini", ".json", ".ipxe"}

def _citation_scope_files() -> list[Path]:
    files: list[Path] = []
    for entry in CITATION_SCOPE:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for candidate in candidates:
            relative = candidate.relative_to(ROOT).as_posix()
            if (candidate.is_file() and candidate.suffix in TEXT_SUFFIXES
                    and "__pycache__" not in candidate.parts
                    and not any(part.startswith(".") for part in candidate.parts[len(ROOT.parts):])
                    and relative not in CITATION_EXEMPT_FILES
                    and not any(relative.startswith(d + "/") for d in CITATION_EXEMPT_DIRS)
                    and (not relative.startswith(GOLDEN_DIR + "/") or candidate.suffix == ".json")):
                files.append(candidate)
    return files


def _json_comments(value: object) -> list[str]:
    """Every "_comment" string in a parsed JSON document, at any depth."""
    if isinstance(value, dict):
        found = [text for key, text in value.items() if key == "_comment" and isinstance(text, str)]
        for item in value.values():
            found.extend(_json_comments(item))
        return found
    if isinstance(value, list):
        return [text for item in value for text in _json_comments(item)]
    return []


def _prose_lines(path: Path) -> list[tuple[str, str]]:
    """(position, text) pairs to check: every line, or a golden JSON file's comments only."""
    text = path.read_text(encoding="utf-8")
    if path.relative_to(ROOT).as_posix().startswith(GOLDEN_DIR + "/"):
        return [("_comment", comment) for comment in _json_comments(json.loads(text))]
    return [(str(number), line) for number, line in enumerate(text.splitlines(), 1)]


def test_no_citations_of_files_outside_the_repository() -> None:
    hits = []
    for path in _citation_scope_files():
        relative = path.relative_to(ROOT).as_posix()
        for position, line in _prose_lines(path):
            for pattern in FORBIDDEN_CITATIONS:
                match = pattern.search(line)
                if match:
                    hits.append(f"{relative}:{position}: {match.group(0)!r} in {line.strip()!r}")
    assert not hits, "state the reason in place or point into docs/reference/:\n" + "\n".join(
        hits)


_MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_in_docs_resolve() -> None:
    broken = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for target in _MARKDOWN_LINK.findall(line):
                if "://" in target or target.startswith(("#", "mailto:")):
                    continue
                file_part = target.split("#", 1)[0]
                if file_part and not (path.parent / file_part).exists():
                    broken.append(f"{path.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "\n".join(broken)
