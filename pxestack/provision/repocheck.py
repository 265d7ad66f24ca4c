"""A bounded integrity check of the cluster repository, run before the store trusts it.

libgit2 loops for ever on some damaged objects: a loose object cut short makes
``repo.head.peel()`` or a tree listing spin at 100 % CPU and never return, so a check that
simply opens the repository in the serving process can hang the whole start-up.
:func:`check_repository` therefore runs the check in a child process
(``python -m pxestack.provision.repocheck DIR``) and gives it a fixed time; a timeout, a
crash or an error means the repository is damaged, with the reason in a sentence.

The child first checks what it can in plain Python, which cannot loop: ``HEAD`` and the
branch it names, then every loose object reachable from HEAD (the commit, its trees and the
records' blobs) is inflated with :mod:`zlib` and its length and SHA-1 are compared with its
name.  Objects kept in pack files are left to the second step: what start-up does with
pygit2 (open, peel HEAD, walk the tree reading every blob, ``git status``).  Nothing is
ever written: the check only reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

#: Seconds the child process may take before the repository is declared damaged.
CHECK_TIMEOUT = 10.0
#: What the operator should do, appended to every reason.
OPERATOR_HINT = (
    "pxestack does not repair it: stop pxestack, copy the cluster directory aside, run "
    "`git fsck` in it and restore the damaged files from a backup or a clone"
)
#: Objects larger than this are not inflated in Python (pygit2 still reads them).
_MAX_OBJECT_BYTES = 64 * 1024 * 1024
_HEX_ID = re.compile(r"^[0-9a-f]{40}$")


class Damaged(Exception):  # noqa: N818
    """The repository is damaged; the message says where."""


def _read_ref(git_dir: Path, name: str) -> str | None:
    """The object id *name* (``refs/heads/...``) points to, or ``None`` when it is absent."""
    loose = git_dir / name
    if loose.is_file():
        value = loose.read_text(encoding="ascii", errors="replace").strip()
        if not _HEX_ID.match(value):
            raise Damaged(f"{loose} does not hold an object id ({value[:60]!r})")
        return value
    packed = git_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="ascii", errors="replace").splitlines():
            oid, _, ref = line.partition(" ")
            if ref == name and _HEX_ID.match(oid):
                return oid
    return None


def head_commit(git_dir: Path) -> str | None:
    """The commit id HEAD names, ``None`` for a repository without commits yet."""
    head = git_dir / "HEAD"
    try:
        text = head.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise Damaged(f"{head} cannot be read: {exc}") from None
    if _HEX_ID.match(text):
        return text
    if not text.startswith("ref: refs/"):
        raise Damaged(f"{head} is neither a ref nor an object id ({text[:60]!r})")
    name = text[len("ref: ") :]
    if ".." in name or "\0" in name or not re.match(r"^[\w./-]+$", name):
        raise Damaged(f"{head} names an invalid ref ({name[:60]!r})")
    oid = _read_ref(git_dir, name)
    if oid is None and _holds_commits(git_dir):
        raise Damaged(
            f"{head} names {name}, which does not exist, but the repository holds commits "
            "(the branch ref is missing)"
        )
    return oid


def _holds_commits(git_dir: Path) -> bool:
    """Whether any commit object exists (loose, or a pack file which nearly always has one)."""
    objects = git_dir / "objects"
    if any((objects / "pack").glob("*.pack")):
        return True
    for path in objects.glob("[0-9a-f][0-9a-f]/*"):
        try:
            start = zlib.decompressobj().decompress(path.read_bytes(), 16)
        except (OSError, zlib.error):
            continue
        if start.startswith(b"commit "):
            return True
    return False


def read_loose(git_dir: Path, oid: str) -> tuple[str, bytes] | None:
    """Inflate and verify the loose object *oid*: (type, body), or ``None`` if it is not loose.

    Raises :class:`Damaged` when the file is cut short, does not inflate, or its header,
    length or SHA-1 do not match.
    """
    path = git_dir / "objects" / oid[:2] / oid[2:]
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None  # packed (or missing: pygit2 finds out in the second step)
    except OSError as exc:
        raise Damaged(f"object {oid} ({path}) cannot be read: {exc}") from None
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(raw, _MAX_OBJECT_BYTES)
    except zlib.error as exc:
        raise Damaged(f"object {oid} ({path}) does not inflate: {exc}") from None
    if inflater.unconsumed_tail:
        return None  # too large to check here
    if not inflater.eof:
        raise Damaged(f"object {oid} ({path}) is cut short ({len(raw)} bytes on disk)")
    header, sep, body = data.partition(b"\0")
    kind, _, size = header.partition(b" ")
    if not sep or kind not in (b"commit", b"tree", b"blob", b"tag") or not size.isdigit():
        raise Damaged(f"object {oid} ({path}) has no valid header")
    if int(size) != len(body):
        raise Damaged(f"object {oid} ({path}) holds {len(body)} of its {int(size)} bytes")
    if hashlib.sha1(data, usedforsecurity=False).hexdigest() != oid:
        raise Damaged(f"object {oid} ({path}) does not match its id")
    return kind.decode(), body


def _tree_entries(body: bytes, oid: str) -> list[tuple[bytes, str]]:
    """(mode, id) of every entry of a tree object's body."""
    entries: list[tuple[bytes, str]] = []
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        nul = body.find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > len(body):
            raise Damaged(f"tree {oid} has a malformed entry")
        entries.append((body[pos:space], body[nul + 1 : nul + 21].hex()))
        pos = nul + 21
    return entries


def verify_loose_objects(git_dir: Path) -> None:
    """Verify HEAD and every loose object reachable from HEAD's tree (plain Python)."""
    commit = head_commit(git_dir)
    if commit is None:
        return
    found = read_loose(git_dir, commit)
    if found is None:
        return
    kind, body = found
    if kind != "commit" or not body.startswith(b"tree "):
        raise Damaged(f"HEAD names {commit}, which is not a commit")
    pending = [body[5:45].decode("ascii", errors="replace")]
    seen: set[str] = set()
    while pending:
        oid = pending.pop()
        if oid in seen:
            continue
        seen.add(oid)
        tree = read_loose(git_dir, oid)
        if tree is None:
            continue
        if tree[0] != "tree":
            raise Damaged(f"object {oid} should be a tree but is a {tree[0]}")
        for mode, child in _tree_entries(tree[1], oid):
            if mode == b"40000":
                pending.append(child)
            elif mode != b"160000":  # a submodule's commit is not in this repository
                read_loose(git_dir, child)


def _check_with_pygit2(root: Path) -> None:
    """What start-up does with the repository, so that it cannot hang later in the service."""
    import pygit2

    try:
        repo = pygit2.Repository(str(root))
        if repo.head_is_unborn:
            return
        commit = repo.head.peel(pygit2.Commit)
        pending = [commit.tree]
        while pending:
            tree = pending.pop()
            for entry in tree:
                obj = repo[entry.id]
                if isinstance(obj, pygit2.Tree):
                    pending.append(obj)
                elif isinstance(obj, pygit2.Blob):
                    obj.read_raw()
        repo.status()
    except (pygit2.GitError, KeyError, ValueError, OSError) as exc:
        raise Damaged(f"git cannot read it: {exc}") from None


def check_in_process(root: Path) -> str | None:
    """The check itself (run in the child): ``None`` when sound, else the reason."""
    try:
        verify_loose_objects(root / ".git")
        _check_with_pygit2(root)
    except Damaged as exc:
        return str(exc)
    return None


def check_repository(root: Path, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Check the repository of the cluster directory *root* in a child process.

    ``None`` when it is sound or does not exist yet; otherwise the reason it cannot be
    trusted, naming the repository and what the operator should do.
    """
    if not (root / ".git").exists():
        return None
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent, *filter(None, [env.get("PYTHONPATH")])]
    )
    command = [sys.executable, "-m", "pxestack.provision.repocheck", str(root)]
    problem: str | None
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        problem = (
            f"checking it took longer than {timeout:g} s (libgit2 loops on some damaged "
            "objects)"
        )
    except OSError as exc:
        problem = f"the check could not be run: {exc}"
    else:
        problem = _verdict(result)
        if problem is None:
            return None
    return f"cluster repository {root} is damaged: {problem}; {OPERATOR_HINT}"


def _verdict(result: subprocess.CompletedProcess[bytes]) -> str | None:
    try:
        answer = json.loads(result.stdout.decode("utf-8", errors="replace").strip() or "null")
    except ValueError:
        answer = None
    if result.returncode == 0 and isinstance(answer, dict) and "damaged" in answer:
        damaged = answer["damaged"]
        return str(damaged) if damaged else None
    lines = result.stderr.decode("utf-8", errors="replace").strip().splitlines()
    last = lines[-1] if lines else "no output"
    return f"the check process failed (exit status {result.returncode}: {last})"


def main(argv: list[str]) -> int:
    """``python -m pxestack.provision.repocheck DIR``: print ``{"damaged": reason|null}``."""
    if len(argv) != 1:
        print("usage: python -m pxestack.provision.repocheck CLUSTER_DIR", file=sys.stderr)
        return 2
    print(json.dumps({"damaged": check_in_process(Path(argv[0]))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
