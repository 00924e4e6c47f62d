"""Who can read the cache and who can put answers in it.

A cache directory someone else can write to is a place to plant answers, and a wrong hit is worse
than a miss; prompts and answers are the user's data, so the files are private to the user. The
tests that give a directory to another user need root (CI and this project's machines run the
tests as root); they are skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmbatch.errors import CacheError
from llmbatch.store import DiskStore
from tests.support import prompts, read_results, run_cli, write_jsonl

NOBODY = 65534  # the uid of "nobody" on Linux
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a directory to another user (chown) needs root; CI runs the tests as root",
)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common 022, so that a file created with default permissions would be 0644 (readable
    by everyone): under a strict umask these tests would pass without the code doing anything."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def entry(text: str = "answer") -> dict:
    return {"response": {"choices": [{"message": {"content": text}}]}}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    for path in root.rglob("*"):
        os.chown(path, uid, uid, follow_symlinks=False)


def plant(source: Path, target: Path, *, owner: int | None, dir_mode: int) -> None:
    """A copy of the cache at ``source`` whose every answer is replaced by a planted one, at
    ``target``, owned by ``owner`` and with ``dir_mode``: what another user could leave there."""
    shutil.copytree(source, target)
    with sqlite3.connect(target / "cache.db") as db:
        rows = db.execute("SELECT rowid, value FROM Cache").fetchall()
        for rowid, value in rows:
            planted = bytes(value).replace(b"Simulated answer", b"PLANTED answer")
            assert planted != bytes(value)
            db.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (planted, rowid))
    db.close()
    if owner is not None:
        chown_tree(target, owner)
    os.chmod(target, dir_mode)


# --- the files are private --------------------------------------------------------------------


def test_a_new_cache_and_everything_in_it_is_private_to_the_user(tmp_path):
    directory = tmp_path / "c"
    with DiskStore(directory) as cache:
        cache.put("v1:small", entry(), tag="t")
        cache.put("v1:big", entry("x" * 100_000), tag="t")  # a value file (diskcache's min_file_size)
        # While the cache is open, SQLite's -wal and -shm files exist: they carry the answers too.
        assert {p.name for p in directory.iterdir()} >= {"cache.db", "cache.db-wal", "cache.db-shm"}
        files = [p for p in directory.rglob("*") if p.is_file()]
        dirs = [p for p in directory.rglob("*") if p.is_dir()]
        assert any(p.suffix == ".val" for p in files)
        assert {p.name: oct(mode(p)) for p in files} == {p.name: "0o600" for p in files}
        assert {str(p): oct(mode(p)) for p in dirs} == {str(p): "0o700" for p in dirs}
    assert mode(directory) == 0o700


def test_the_files_of_a_first_run_are_private_to_the_user(tmp_path, sim, llmbatch, cache_dir):
    # One answer long enough to be a value file: the simulator's answer repeats the prompt.
    rows = [*prompts(3), {"id": "long", "prompt": "word " * 8000}]
    assert llmbatch("run", str(write_jsonl(tmp_path / "p.jsonl", rows))).exit_code == 0
    paths = [cache_dir, *cache_dir.rglob("*")]
    assert any(p.suffix == ".val" for p in paths)
    wrong = {str(p): oct(mode(p)) for p in paths if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}


def test_an_older_cache_with_open_files_is_closed_up_when_opened(tmp_path):
    directory = tmp_path / "c"
    with DiskStore(directory) as cache:
        cache.put("v1:big", entry("x" * 100_000), tag="t")
    # What diskcache and SQLite made before llmbatch created its files itself.
    value = next(directory.rglob("*.val"))
    for path in (directory / "cache.db", value):
        path.chmod(0o644)
    for path in (value.parent, value.parent.parent):
        path.chmod(0o755)
    (directory / "notes.txt").write_text("not ours to change")
    (directory / "notes.txt").chmod(0o644)
    with DiskStore(directory) as cache:
        assert cache.get("v1:big") == entry("x" * 100_000)
    assert mode(directory / "cache.db") == 0o600
    assert mode(value) == 0o600
    assert mode(value.parent) == mode(value.parent.parent) == 0o700
    assert mode(directory / "notes.txt") == 0o644  # only diskcache's own layout is touched


# --- directories others can write to are refused -----------------------------------------------


@pytest.mark.parametrize("dir_mode", [0o777, 0o775, 0o1777, 0o757])
def test_a_cache_directory_others_can_write_to_is_refused_with_the_fix(tmp_path, dir_mode):
    directory = tmp_path / "c"
    DiskStore(directory).close()
    directory.chmod(dir_mode)
    with pytest.raises(CacheError) as raised:
        DiskStore(directory)
    message = str(raised.value)
    assert f"cache directory {directory} is writable by other users (mode {dir_mode:04o})" in message
    assert f"chmod 700 {directory}" in message and "--shared-cache" in message
    assert "\n" not in message
    # Readable by others is not a way in: with every file 0600, a 0755 directory of ours is fine.
    directory.chmod(0o755)
    DiskStore(directory).close()


def test_an_empty_new_directory_that_is_open_to_others_is_refused_too(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(CacheError, match="writable by other users"):
        DiskStore(directory)
    assert not (directory / "cache.db").exists()  # refused before anything was created


@needs_root
@pytest.mark.parametrize("dir_mode", [0o777, 0o755])
def test_a_cache_directory_of_another_user_is_refused_and_its_answers_never_served(tmp_path, dir_mode):
    source = tmp_path / "mine"
    with DiskStore(source) as cache:
        cache.put("v1:a", {"response": {"text": "Simulated answer"}}, tag="t")
    planted = tmp_path / "theirs"
    plant(source, planted, owner=NOBODY, dir_mode=dir_mode)
    with pytest.raises(CacheError) as raised:
        DiskStore(planted)
    assert f"cache directory {planted} belongs to another user, nobody (uid {NOBODY})" in str(raised.value)
    assert "--shared-cache" in str(raised.value)
    # Shared on purpose: accepted, and nothing in it is changed.
    before = {str(p): (p.lstat().st_uid, mode(p)) for p in [planted, *planted.rglob("*")]}
    with DiskStore(planted, shared=True) as cache:
        assert cache.get("v1:a") == {"response": {"text": "PLANTED answer"}}
    after = {str(p): (p.lstat().st_uid, mode(p)) for p in [planted, *planted.rglob("*")]}
    assert after == before


@needs_root
def test_a_cache_database_of_another_user_in_a_directory_of_ours_is_refused(tmp_path):
    # As after a directory that was open to others is closed with chmod 700: what they left stays theirs.
    directory = tmp_path / "c"
    with DiskStore(directory) as cache:
        cache.put("v1:a", entry(), tag="t")
    os.chown(directory / "cache.db", NOBODY, NOBODY)
    with pytest.raises(CacheError, match=r"cache database .*cache\.db belongs to another user"):
        DiskStore(directory)


@needs_root
def test_a_value_file_of_another_user_reads_as_a_miss(tmp_path):
    directory = tmp_path / "c"
    with DiskStore(directory) as cache:
        cache.put("v1:big", entry("x" * 100_000), tag="t")
        cache.put("v1:small", entry(), tag="t")
    os.chown(next(directory.rglob("*.val")), NOBODY, NOBODY)
    with DiskStore(directory) as cache:
        assert cache.get("v1:big") is None
        assert cache.get_many(["v1:big", "v1:small"]) == {"v1:small": entry()}
    with DiskStore(directory, shared=True) as cache:  # a shared cache holds others' files
        assert cache.get("v1:big") == entry("x" * 100_000)


def test_a_shared_cache_is_opened_as_it_is_and_its_new_files_follow_the_umask(tmp_path):
    directory = tmp_path / "team"
    directory.mkdir()
    directory.chmod(0o777)
    with DiskStore(directory, shared=True) as cache:
        cache.put("v1:big", entry("x" * 100_000), tag="t")
        assert cache.get("v1:big") == entry("x" * 100_000)
    assert mode(directory) == 0o777
    assert mode(directory / "cache.db") == 0o644  # 0666 under the umask: others in the team can read it
    assert mode(next(directory.rglob("*.val"))) == 0o644


# --- the same through the command line -----------------------------------------------------------


def _paid_cache(tmp_path: Path, llmbatch) -> tuple[Path, Path]:
    """An input file and a cache holding its real answers (so its keys are the ones a run asks for)."""
    path = write_jsonl(tmp_path / "p.jsonl", prompts(3))
    source = tmp_path / "paid"
    assert llmbatch("run", str(path), "--cache-dir", str(source)).exit_code == 0
    path.with_suffix(".results.jsonl").unlink()
    return path, source


@needs_root
@pytest.mark.parametrize("dir_mode", [0o777, 0o755])
def test_a_run_refuses_a_planted_cache_directory_and_serves_nothing_from_it(tmp_path, sim, llmbatch, dir_mode):
    path, source = _paid_cache(tmp_path, llmbatch)
    planted = tmp_path / "planted"
    plant(source, planted, owner=NOBODY, dir_mode=dir_mode)
    paid = sim.stats()["requests_received"]
    result = llmbatch("run", str(path), "--cache-dir", str(planted))
    assert result.exit_code == 2
    assert f"llmbatch: error: cache directory {planted} belongs to another user" in result.stderr
    assert "Traceback" not in result.stderr and "PLANTED" not in result.stdout + result.stderr
    assert not path.with_suffix(".results.jsonl").exists()
    assert sim.stats()["requests_received"] == paid  # nothing sent either


def test_a_run_refuses_a_cache_directory_of_ours_that_others_can_write_to(tmp_path, sim, llmbatch):
    path, source = _paid_cache(tmp_path, llmbatch)
    planted = tmp_path / "planted"
    plant(source, planted, owner=None, dir_mode=0o777)
    result = llmbatch("run", str(path), "--cache-dir", str(planted))
    assert result.exit_code == 2
    assert f"cache directory {planted} is writable by other users (mode 0777)" in result.stderr
    assert not path.with_suffix(".results.jsonl").exists()
    # Shared on purpose: the run uses it, and its hits are served.
    shared = llmbatch("run", str(path), "--cache-dir", str(planted), "--shared-cache")
    assert shared.exit_code == 0, shared.stderr
    assert all(row["cached"] for row in read_results(path.with_suffix(".results.jsonl")))
    plan = ["plan", str(path), "--cache-dir", str(planted), "--shared-cache", "-m", "openai:gpt-4o-mini"]
    assert llmbatch(*plan, "--api-base", sim.url).exit_code == 0


@pytest.mark.parametrize(
    "command",
    [["stats"], ["stats", "--json"], ["purge", "--older-than", "1d"], ["purge", "--model", "x:y"], ["clear", "--yes"]],
)
def test_every_cache_command_refuses_a_directory_open_to_others_unless_shared(tmp_path, env, command):
    directory = tmp_path / "open"
    with DiskStore(directory) as cache:
        cache.put("v1:a", entry(), tag="openai:m")
    directory.chmod(0o777)
    args = ["cache", *command, "--cache-dir", str(directory)]
    refused = run_cli(args, env=env)
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1 and "writable by other users" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert run_cli([*args, "--shared-cache"], env=env).exit_code == 0
    assert run_cli(args, env={**env, "LLMBATCH_SHARED_CACHE": "1"}).exit_code == 0


@needs_root
def test_cache_stats_refuses_a_planted_directory_and_shows_it_when_shared(tmp_path, sim, llmbatch, env):
    _, source = _paid_cache(tmp_path, llmbatch)
    planted = tmp_path / "planted"
    plant(source, planted, owner=NOBODY, dir_mode=0o755)
    refused = run_cli(["cache", "stats", "--cache-dir", str(planted)], env=env)
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"llmbatch: error: cache directory {planted} belongs to another user, nobody (uid {NOBODY}): its answers "
        "cannot be trusted; use a directory of your own (--cache-dir), or pass --shared-cache if you share it "
        "on purpose\n"
    )
    shared = run_cli(["cache", "stats", "--json", "--shared-cache", "--cache-dir", str(planted)], env=env)
    assert shared.exit_code == 0 and '"entries": 3' in shared.stdout


def test_results_from_a_private_cache_are_served_as_before(tmp_path, sim, llmbatch):
    # The checks cost a rerun nothing it used to have: every line is still a hit.
    path, source = _paid_cache(tmp_path, llmbatch)
    assert llmbatch("run", str(path), "--cache-dir", str(source)).exit_code == 0
    assert all(r["cached"] for r in read_results(path.with_suffix(".results.jsonl")))
