"""The disk store: paid answers in a diskcache directory, as JSON, keyed by the request key.

The default :class:`~llmbatch.store.base.ResponseStore`, and the only module that imports
diskcache (and the only one that knows its file names). One entry per request key; the value is a
:class:`~llmbatch.model.entry.CacheEntry`. Values go through :class:`JSONValueDisk`, which refuses
anything but a dict, so nothing is ever pickled: a cache directory is data, never code.

Why some SQL: stats and purge must be fast on a million entries without deserialising every
value, and diskcache already keeps ``store_time`` and ``tag`` (we tag each entry with
``provider:model``) as indexed columns of its ``Cache`` table. We read that table directly and
delete through diskcache's own batched ``_select_delete`` (which also removes value files). The
schema has been stable since diskcache 4; pyproject pins ``diskcache<6`` so a schema change
cannot arrive unannounced.

Settings that diskcache persists (size limit, eviction policy) are only written when the user
asks, or when the cache is created: re-opening a cache with a default must never shrink a
limit the user raised, because diskcache culls down to the limit on the next write.

Who may read and write it (a wrong hit is worse than a miss, and prompts are the user's data):

- The directory is created 0700. An existing one that belongs to another user, or that other
  users can write to, is refused with a :class:`CacheError` saying how to fix it: anyone who can
  write there can plant answers. ``shared=True`` (``--shared-cache``) accepts it, for a cache
  shared on purpose.
- ``cache.db`` is created 0600 by us before SQLite opens it, so its ``-wal`` and ``-shm`` files
  (SQLite gives them the database file's mode) are 0600 too. A ``cache.db`` we own that is more
  open (a cache made before this rule) is tightened to 0600 on open, with its value files; one
  that belongs to another user is refused. Value files (answers of ``disk_min_file_size`` bytes
  or more) are written 0600 in 0700 subdirectories, and one that belongs to another user reads
  as a miss. With ``shared=True`` nothing is tightened or refused and new files follow the
  umask: the directory's own permissions decide who shares it.

A cache directory removed (or replaced) while a run has it open: SQLite would go on writing
into the unlinked file, so every later answer would be lost. Before each write of a run
(``put``, ``put_many``, ``record_lookups``) one ``os.stat`` compares ``cache.db``'s inode with
the one opened; if it is gone or another, the cache is opened again at the same path (created
as above, with the same size limit and eviction policy), the write goes there, and
:attr:`DiskStore.recreated` says so.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import diskcache
import orjson

from llmbatch.errors import CacheError
from llmbatch.model.entry import CacheEntry, servable
from llmbatch.model.stats import Lookups
from llmbatch.store.base import Loaded, Stored, StoreStats

__all__ = [
    "DEFAULT_EVICTION",
    "DEFAULT_SIZE_LIMIT",
    "EVICTION_POLICIES",
    "DiskStore",
    "default_cache_dir",
    "store_exists",
]

#: Generous by default (an answer is a few KB: this holds millions), and explicit: never
#: diskcache's silent 1 GB.
DEFAULT_SIZE_LIMIT = 20 * 10**9
#: Least-recently-stored keeps reads read-only (least-recently-used would turn every hit into
#: a write, which costs warm reruns dearly). "none" never evicts anything.
DEFAULT_EVICTION = "least-recently-stored"
#: Keys per SELECT in get_many: well under SQLite's limit of host parameters (32,766).
_SQL_BATCH = 500
EVICTION_POLICIES = ("least-recently-stored", "least-recently-used", "least-frequently-used", "none")
#: SQLite reads the database through its own page cache (diskcache's 8,192 pages, ~32 MB), not
#: also through a memory map: diskcache maps the first 64 MB, and every mapped page read counts
#: in the process's RSS. Measured on a 100,000-line cached rerun (bench/run.py): peak RSS
#: 147 -> 82 MB, no difference in time.
_MMAP_BYTES = 0
#: Modes of what we create, private (the default) or shared on purpose (then the umask decides).
_PRIVATE_FILE, _PRIVATE_DIR = 0o600, 0o700
_SHARED_FILE, _SHARED_DIR = 0o666, 0o777
_DBNAME = "cache.db"  # diskcache's database file name (diskcache.core.DBNAME)


def store_exists(directory: Path) -> bool:
    """Whether a disk store has been made in ``directory`` (without opening or creating one)."""
    return (Path(directory) / _DBNAME).exists()


def default_cache_dir() -> Path:
    """``$LLMBATCH_CACHE_DIR``, else the platform's user cache directory."""
    env = os.environ.get("LLMBATCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # only needed when no directory was given

    return Path(platformdirs.user_cache_dir("llmbatch", appauthor=False))


class JSONValueDisk(diskcache.Disk):
    """Keys as diskcache stores strings (raw, queryable); values as compact JSON bytes.

    A value that is not a dict is a programming error and raises: the default Disk would
    pickle it. Values of ``min_file_size`` bytes or more go to a value file, which we write
    ourselves so that it is created with a private mode (diskcache's own would be 0644 in 0755
    subdirectories) and read back only if it is ours.
    """

    #: Set by DiskStore after opening: False for a cache shared on purpose.
    private = True

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read or not isinstance(value, dict):
            raise TypeError(f"llmbatch stores JSON objects only, not {type(value).__name__}")
        data = orjson.dumps(value)
        if len(data) < self.min_file_size:
            return 0, diskcache.core.MODE_RAW, None, sqlite3.Binary(data)
        filename, full_path = self.filename(key, value)
        self._write_value_file(full_path, data)
        return len(data), diskcache.core.MODE_BINARY, filename, None

    def _write_value_file(self, full_path: str, data: bytes) -> None:
        file_mode, dir_mode = (_PRIVATE_FILE, _PRIVATE_DIR) if self.private else (_SHARED_FILE, _SHARED_DIR)
        inner = os.path.dirname(full_path)
        for attempt in range(10):
            # Both levels of diskcache's ab/cd/ layout with our mode (os.makedirs would give the
            # outer one the default). A purge elsewhere may remove an emptied subdirectory between
            # mkdir and open: diskcache retries for that, and so do we.
            for level in (os.path.dirname(inner), inner):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(level, dir_mode)
            try:
                fd = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, file_mode)
            except FileNotFoundError:
                if attempt == 9:
                    raise
                continue
            with open(fd, "wb") as out:
                out.write(data)
            return

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        # Only bytes we wrote can come back: diskcache's own fetch would unpickle a pickled row
        # (a cache directory is data, never code), so any other mode is refused before that.
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise CorruptEntry(f"unexpected storage mode {mode}")
        if mode == diskcache.core.MODE_BINARY and filename is not None and self.private:
            data = self._read_own_file(filename)
        else:
            data = super().fetch(mode, filename, value, read)
        try:
            entry = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CorruptEntry(str(exc)) from None
        if not isinstance(entry, dict):
            raise CorruptEntry("not a JSON object")
        return entry

    def _read_own_file(self, filename: str) -> bytes:
        """A value file's bytes, if it belongs to us: one planted by someone else (while the
        directory was open to them) is not our answer."""
        fd = os.open(os.path.join(self._directory, filename), os.O_RDONLY | os.O_CLOEXEC)
        with open(fd, "rb") as reader:
            if not _ours(os.fstat(fd)):
                raise CorruptEntry("value file belongs to another user")
            return reader.read()


def _ours(st: os.stat_result) -> bool:
    geteuid = getattr(os, "geteuid", None)  # POSIX only; elsewhere there is no owner to compare
    return geteuid is None or st.st_uid == geteuid()


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _tighten_value_files(directory: Path) -> None:
    """Make the value files of an older cache 0600 and their subdirectories 0700: diskcache made
    them 0644 and 0755. Only diskcache's own layout (``ab/cd/*.val``) and only what we own: a
    cache directory may have been pointed at a folder with other things in it."""
    hex_pair = frozenset("0123456789abcdef")

    def subdirs(path: Path) -> list[Path]:
        try:
            return [
                p
                for p in path.iterdir()
                if len(p.name) == 2 and set(p.name) <= hex_pair and p.is_dir() and not p.is_symlink()
            ]
        except OSError:
            return []

    for outer in subdirs(directory):
        for inner in subdirs(outer):
            for value in inner.glob("*.val"):
                with contextlib.suppress(OSError):
                    if not value.is_symlink() and _ours(value.stat()):
                        value.chmod(_PRIVATE_FILE)
            with contextlib.suppress(OSError):
                if _ours(inner.stat()):
                    inner.chmod(_PRIVATE_DIR)
        with contextlib.suppress(OSError):
            if _ours(outer.stat()):
                outer.chmod(_PRIVATE_DIR)


class CorruptEntry(ValueError):
    """A stored value that is not one of our JSON objects: treated as a miss, never trusted."""


@dataclass(frozen=True, slots=True)
class DiskStats(StoreStats):
    """The figures every store gives, and diskcache's own two settings."""

    @property
    def size_limit(self) -> int:
        return int(self.details["size_limit"])

    @property
    def eviction_policy(self) -> str:
        return str(self.details["eviction_policy"])


class DiskStore:
    """A persistent map from request key to stored answer (a JSON object).

    Safe to share between processes (diskcache uses SQLite in WAL mode); each ``put`` is its
    own transaction, so an answer is durable the moment ``put`` returns.

    ``shared``: accept a directory that belongs to another user or that others can write to (a
    cache shared on purpose); otherwise such a directory is a :class:`CacheError`.

    ``recreated`` is True once the cache directory was found removed or replaced before a write
    and the cache was opened again at the same path (``recreated_at``: when, as ``time.time()``):
    answers written before that are gone with the old directory, answers from then on are in the
    new cache. A run's summary can say so.
    """

    def __init__(
        self,
        directory: Path,
        *,
        size_limit: int | None = None,
        eviction_policy: str | None = None,
        create: bool = True,
        shared: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.shared = shared
        self.recreated = False
        self.recreated_at: float | None = None
        self._in_batch = False  # put_many's transaction is open
        self._db_path = str(self.directory / _DBNAME)
        self._cache, self._db_id = self._open(size_limit, eviction_policy, create=create)

    def _open(
        self, size_limit: int | None, eviction_policy: str | None, *, create: bool
    ) -> tuple[diskcache.Cache, tuple[int, int]]:
        """Check the directory, prepare ``cache.db``, open diskcache; the cache and the
        database's (device, inode)."""
        new = not os.path.exists(self._db_path)
        if new and not create:
            raise CacheError(f"no cache at {self.directory}")
        # diskcache rewrites its settings on every open anyway: this also applies to older caches.
        settings: dict[str, Any] = {"sqlite_mmap_size": _MMAP_BYTES}
        if size_limit is not None or new:
            settings["size_limit"] = size_limit if size_limit is not None else DEFAULT_SIZE_LIMIT
        if eviction_policy is not None or new:
            policy = eviction_policy or DEFAULT_EVICTION
            if policy not in EVICTION_POLICIES:
                raise CacheError(f"unknown eviction policy {policy!r}: choose one of {', '.join(EVICTION_POLICIES)}")
            settings["eviction_policy"] = policy
        try:
            # 0700: prompts and answers are the user's data, not the machine's.
            self.directory.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
            self._check_directory()
            self._prepare_database()
            cache = diskcache.Cache(str(self.directory), disk=JSONValueDisk, **settings)
            cache.disk.private = not self.shared
            st = os.stat(self._db_path)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot open the cache at {self.directory}: {exc}") from None
        return cache, (st.st_dev, st.st_ino)

    def _check_directory(self) -> None:
        """Refuse a directory someone else could have planted answers in (unless shared)."""
        st = os.stat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise CacheError(f"cache directory {self.directory} is not a directory")
        if self.shared:
            return
        where = shlex.quote(str(self.directory))
        if not _ours(st):
            raise CacheError(
                f"cache directory {self.directory} belongs to another user, {_owner(st.st_uid)}: its answers "
                "cannot be trusted; use a directory of your own (--cache-dir), or pass --shared-cache if you "
                "share it on purpose"
            )
        if st.st_mode & 0o022:
            raise CacheError(
                f"cache directory {self.directory} is writable by other users (mode {st.st_mode & 0o7777:04o}): "
                f"anyone could plant answers in it; run chmod 700 {where}, or pass --shared-cache if you "
                "share it on purpose"
            )

    def _prepare_database(self) -> None:
        """Create ``cache.db`` 0600 before SQLite does (it would make it 0644, and its -wal and
        -shm files with it); refuse one that is not ours; tighten one of ours that is more open."""
        mode = _SHARED_FILE if self.shared else _PRIVATE_FILE
        try:
            fd = os.open(self._db_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except FileExistsError:
            pass
        else:
            os.close(fd)  # an empty file is a new SQLite database: diskcache sets it up as usual
            return
        if self.shared:
            return
        st = os.stat(self._db_path)
        if not _ours(st):
            raise CacheError(
                f"cache database {self._db_path} belongs to another user, {_owner(st.st_uid)}: its answers "
                f"cannot be trusted; move it away, or pass --shared-cache if you share the cache on purpose"
            )
        if st.st_mode & 0o077:
            # Made before llmbatch created its files private: close it up, value files included.
            for path in (self._db_path, self._db_path + "-wal", self._db_path + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    if _ours(os.stat(path)):
                        os.chmod(path, _PRIVATE_FILE)
            _tighten_value_files(self.directory)

    def _current(self) -> diskcache.Cache:
        """The open cache, opened again first if its directory was removed or replaced meanwhile
        (otherwise SQLite writes on into the unlinked file, and every answer from then on is lost).
        One stat per write."""
        try:
            st = os.stat(self._db_path)
            if (st.st_dev, st.st_ino) == self._db_id:
                return self._cache
        except FileNotFoundError:
            pass
        except OSError:
            return self._cache  # cannot tell (e.g. no search permission): the write itself will say
        old = self._cache
        # Opened before the old one is closed: if this raises (say the path is now a directory
        # others can write to), reads stay on the old database instead of a closed diskcache
        # reconnecting to whatever is at the path unchecked. Closing the old one afterwards cannot
        # harm the new one's -wal and -shm: SQLite skips the checkpoint and the deletion of those
        # files when the database it had open has moved.
        self._cache, self._db_id = self._open(int(old.size_limit), str(old.eviction_policy), create=True)
        with contextlib.suppress(sqlite3.Error):
            old.close()
        self.recreated = True
        self.recreated_at = time.time()
        return self._cache

    # -- the run's hot path ----------------------------------------------------------------

    def get(self, key: str) -> CacheEntry | None:
        """The stored entry, or None when missing, expired or unreadable (a miss costs money;
        a wrong or corrupt hit costs trust)."""
        try:
            entry = self._cache.get(key, default=None, retry=True)
        except (CorruptEntry, TypeError, ValueError):  # TypeError, ValueError: a damaged row
            return None
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot read the cache at {self.directory}: {exc}") from None
        return entry if servable(key, entry) else None

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        """The stored entries among ``keys``; missing, expired or unreadable keys are absent.

        One SELECT for the whole batch instead of a transaction per key (~3x faster on a cached
        rerun). Only under policies where a read changes nothing: least-recently-used and
        least-frequently-used record every read, so they go through diskcache's own ``get``.
        """
        keys = list(keys)
        if self._cache.eviction_policy not in ("least-recently-stored", "none"):
            return self._get_each(keys)
        found: dict[str, CacheEntry] = {}
        now = time.time()
        fetch = self._cache.disk.fetch
        raw_mode = diskcache.core.MODE_RAW
        try:
            for start in range(0, len(keys), _SQL_BATCH):
                batch = keys[start : start + _SQL_BATCH]
                marks = ",".join("?" * len(batch))
                rows = self._cache._sql(
                    f"SELECT key, expire_time, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({marks})",
                    batch,
                ).fetchall()
                for key, expire_time, mode, filename, value in rows:
                    if expire_time is not None and not (isinstance(expire_time, float | int) and expire_time >= now):
                        continue  # expired (or a damaged time): a miss, as diskcache's get would say
                    try:
                        if mode == raw_mode and filename is None and type(value) is bytes:
                            # The common row: our JSON bytes inline. What fetch does, minus two calls.
                            entry = orjson.loads(value)
                        else:
                            entry = fetch(mode, filename, value, False)
                    except (CorruptEntry, OSError, orjson.JSONDecodeError, TypeError, ValueError):
                        continue  # unreadable (or a value file removed meanwhile): a miss
                    if servable(key, entry):
                        found[key] = cast(CacheEntry, entry)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read the cache at {self.directory}: {exc}") from None
        return found

    def _get_each(self, keys: list[str]) -> dict[str, CacheEntry]:
        found: dict[str, CacheEntry] = {}
        for key in keys:
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    def put(self, key: str, entry: CacheEntry, *, tag: str, ttl_s: float | None = None) -> None:
        """Store ``entry`` durably; raises :class:`CacheError` if the disk refuses."""
        # Inside put_many's transaction the cache was checked once for the batch: a reopening
        # here would split the batch between two databases.
        cache = self._cache if self._in_batch else self._current()
        try:
            cache.set(key, entry, expire=ttl_s, tag=tag, retry=True)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write to the cache at {self.directory}: {exc}") from None

    def put_many(self, items: list[tuple[str, CacheEntry, str]], *, ttl_s: float | None = None) -> None:
        """Store ``(key, entry, tag)`` items in one transaction: all of them, or none (and
        :class:`CacheError`)."""
        if len(items) == 1:
            key, entry, tag = items[0]
            self.put(key, entry, tag=tag, ttl_s=ttl_s)
            return
        cache = self._current()  # checked once, outside the transaction
        try:
            with cache.transact(retry=True):
                # Each item through put, as before: one place where an answer is written.
                self._in_batch = True
                try:
                    for key, entry, tag in items:
                        self.put(key, entry, tag=tag, ttl_s=ttl_s)
                finally:
                    self._in_batch = False
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write to the cache at {self.directory}: {exc}") from None

    def record_lookups(self, lookups: Mapping[str, Lookups]) -> None:
        """Add a run's hits, misses and savings to the lifetime counters, per tag and in total.

        The totals: diskcache keeps ``hits``/``misses`` rows in its Settings table for its own
        statistics mode, which costs a write per ``get``. We leave that mode off and add the run's
        totals in one transaction instead, so ``Cache.stats()`` still reports lifetime figures.
        Per ``provider:model``: our own small table (like the leases'), in the same transaction.
        """
        lookups = {tag: n for tag, n in lookups.items() if n.hits or n.misses}
        if not lookups:
            return
        hits = sum(n.hits for n in lookups.values())
        misses = sum(n.misses for n in lookups.values())
        saved_usd = sum(n.saved_usd for n in lookups.values())
        cache = self._current()
        try:
            with cache.transact(retry=True):
                sql = cache._sql
                sql('UPDATE Settings SET value = value + ? WHERE key = "hits"', (hits,))
                sql('UPDATE Settings SET value = value + ? WHERE key = "misses"', (misses,))
                # Our own row beside diskcache's: the dollars that hits saved over the cache's life.
                sql("INSERT OR IGNORE INTO Settings VALUES ('llmbatch_saved_usd', 0.0)")
                sql("UPDATE Settings SET value = value + ? WHERE key = 'llmbatch_saved_usd'", (saved_usd,))
                sql(
                    "CREATE TABLE IF NOT EXISTS llmbatch_lookups "
                    "(tag TEXT PRIMARY KEY, hits INTEGER NOT NULL, misses INTEGER NOT NULL, saved_usd REAL NOT NULL)"
                )
                for tag, n in lookups.items():
                    sql(
                        "INSERT INTO llmbatch_lookups (tag, hits, misses, saved_usd) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (tag) DO UPDATE SET hits = hits + excluded.hits, "
                        "misses = misses + excluded.misses, saved_usd = saved_usd + excluded.saved_usd",
                        (tag, n.hits, n.misses, n.saved_usd),
                    )
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write to the cache at {self.directory}: {exc}") from None

    def _lookups_by_model(self) -> dict[str, Lookups]:
        try:
            rows = self._cache._sql("SELECT tag, hits, misses, saved_usd FROM llmbatch_lookups").fetchall()
        except sqlite3.Error:  # no table yet: a cache from before per-model counts, or never run
            return {}
        return {tag: Lookups(hits, misses, saved_usd) for tag, hits, misses, saved_usd in rows}

    # -- leases: which run is calling which key ---------------------------------------------

    def lease(self, keys: Iterable[str], owner: str, *, ttl_s: float, now: float | None = None) -> set[str]:
        """Take the keys that no other owner holds (or whose holder let the lease run out) for
        ``owner``, until ``now + ttl_s``; return every one of ``keys`` that ``owner`` holds now.
        One transaction: two runs asking at once each get a share, never the same key."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return set()
        now = time.time() if now is None else now
        cache = self._current()
        try:
            with cache.transact(retry=True):
                sql = cache._sql
                self._lease_table(sql)
                for key in keys:
                    sql(
                        "INSERT INTO llmbatch_leases (key, owner, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO "
                        "UPDATE SET owner = excluded.owner, expires = excluded.expires "
                        "WHERE llmbatch_leases.expires < ? OR llmbatch_leases.owner = excluded.owner",
                        (key, owner, now + ttl_s, now),
                    )
                held: set[str] = set()
                for start in range(0, len(keys), _SQL_BATCH):
                    batch = keys[start : start + _SQL_BATCH]
                    marks = ",".join("?" * len(batch))
                    rows = sql(f"SELECT key FROM llmbatch_leases WHERE owner = ? AND key IN ({marks})", [owner, *batch])
                    held.update(key for (key,) in rows.fetchall())
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write to the cache at {self.directory}: {exc}") from None
        return held

    def renew(self, owner: str, *, ttl_s: float, now: float | None = None) -> None:
        """Push back the expiry of every lease ``owner`` holds (a call can take minutes)."""
        now = time.time() if now is None else now
        self._lease_write("UPDATE llmbatch_leases SET expires = ? WHERE owner = ?", (now + ttl_s, owner))

    def release(self, keys: Iterable[str], owner: str) -> None:
        """Give up ``owner``'s leases on ``keys`` (answered and stored, or failed)."""
        keys = list(keys)
        for start in range(0, len(keys), _SQL_BATCH):
            batch = keys[start : start + _SQL_BATCH]
            marks = ",".join("?" * len(batch))
            self._lease_write(f"DELETE FROM llmbatch_leases WHERE owner = ? AND key IN ({marks})", (owner, *batch))

    def release_all(self, owner: str) -> None:
        """Give up every lease ``owner`` holds (the run is over)."""
        self._lease_write("DELETE FROM llmbatch_leases WHERE owner = ?", (owner,))

    def lease_owners(self) -> set[str]:
        """Every owner holding a lease now (to find runs on this machine that died holding some)."""
        try:
            return {owner for (owner,) in self._current()._sql("SELECT DISTINCT owner FROM llmbatch_leases")}
        except sqlite3.Error:  # no table yet: nobody ever held a lease here
            return set()

    def _lease_write(self, statement: str, args: tuple[Any, ...]) -> None:
        cache = self._current()
        try:
            with cache.transact(retry=True):
                self._lease_table(cache._sql)
                cache._sql(statement, args)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write to the cache at {self.directory}: {exc}") from None

    @staticmethod
    def _lease_table(sql: Any) -> None:
        # Our own table beside diskcache's, in the same database: a lease and the answer that ends
        # it live in one file, and a removed cache directory takes both with it.
        sql(
            "CREATE TABLE IF NOT EXISTS llmbatch_leases "
            "(key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID"
        )

    # -- results files this cache's runs are writing -----------------------------------------

    def note_partial(self, identity: tuple[int, int], token: str) -> None:
        """Record that a run with this cache writes the ``.partial`` file ``(st_dev, st_ino)``, marked
        with ``token``: a later run may take the answers in it back into the cache, and only from
        such a file (a ``.partial`` shipped with a cloned repository, or put at a name whose inode
        number was freed and reused, must never plant answers here)."""
        self._partial_write("INSERT OR REPLACE INTO llmbatch_partial_files VALUES (?, ?, ?)", (*identity, token))

    def knows_partial(self, identity: tuple[int, int], token: str) -> bool:
        try:
            rows = self._current()._sql(
                "SELECT 1 FROM llmbatch_partial_files WHERE dev = ? AND ino = ? AND token = ?", (*identity, token)
            )
            return bool(rows.fetchall())
        except sqlite3.Error:  # no such table yet: no run of this cache left a .partial
            return False

    def forget_partial(self, identity: tuple[int, int]) -> None:
        """The file was completed (renamed into place) or removed."""
        self._partial_write("DELETE FROM llmbatch_partial_files WHERE dev = ? AND ino = ?", identity)

    def _partial_write(self, statement: str, args: tuple[Any, ...]) -> None:
        cache = self._current()
        try:
            with cache.transact(retry=True):
                cache._sql(
                    "CREATE TABLE IF NOT EXISTS llmbatch_partial_files "
                    "(dev INTEGER, ino INTEGER, token TEXT NOT NULL, PRIMARY KEY (dev, ino))"
                )
                cache._sql(statement, args)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write to the cache at {self.directory}: {exc}") from None

    # -- maintenance -------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        sql = self._cache._sql
        ((count,),) = sql("SELECT COUNT(*) FROM Cache").fetchall()
        # Times that are numbers only: a damaged row's text would sort after every one of them.
        ((oldest, newest),) = sql(
            "SELECT MIN(store_time), MAX(store_time) FROM Cache WHERE typeof(store_time) IN ('real', 'integer')"
        ).fetchall()
        by_model = {
            str(tag if tag is not None else "(untagged)"): n
            for tag, n in sql("SELECT tag, COUNT(*) FROM Cache GROUP BY tag ORDER BY COUNT(*) DESC").fetchall()
        }
        hits, misses = self._cache.stats(enable=False)
        saved = sql("SELECT value FROM Settings WHERE key = 'llmbatch_saved_usd'").fetchall()
        return DiskStats(
            saved_usd=float(saved[0][0]) if saved else 0.0,
            stored_value_usd=self._stored_value(),
            location=self.location,
            entries=count,
            size_bytes=self._cache.volume(),
            details={"size_limit": int(self._cache.size_limit), "eviction_policy": str(self._cache.eviction_policy)},
            oldest=oldest,
            newest=newest,
            by_model=by_model,
            hits=hits,
            misses=misses,
            lookups_by_model=self._lookups_by_model(),
        )

    def _stored_value(self) -> float:
        """What every stored answer cost when it was paid. Read from the raw JSON bytes, without
        parsing each value: ``"cost_usd":`` is found and only its number is read."""
        total = 0.0
        marker = b'"cost_usd":'
        for (value,) in self._cache._sql("SELECT value FROM Cache WHERE value IS NOT NULL"):
            at = value.find(marker) if isinstance(value, bytes) else -1
            if at < 0:
                continue
            start = at + len(marker)
            end = start
            while end < len(value) and value[end] in b"0123456789.eE+-":
                end += 1
            if end > start:
                total += float(value[start:end])
        return total

    def count(self) -> int:
        """How many entries there are (from the index: no value is read)."""
        ((n,),) = self._cache._sql("SELECT COUNT(*) FROM Cache").fetchall()
        return int(n)

    def purge(
        self,
        older_than_s: float | None,
        *,
        tag: str | None = None,
        dry_run: bool = False,
        now: float | None = None,
    ) -> int:
        """Remove entries stored more than ``older_than_s`` seconds ago, of the ``provider:model``
        ``tag`` only if given, or every entry of ``tag`` if ``older_than_s`` is None; return how many.

        Uses the ``store_time`` index that the least-recently-stored policy creates (and that
        we create for other policies too), so it never reads a value. Removing everything is
        :meth:`clear`, on purpose: no forgotten option should mean "all of it".
        """
        if older_than_s is None and tag is None:
            raise ValueError("purge needs older_than_s or tag; clear() removes every entry")
        where: list[str] = []
        args: list[Any] = []
        if older_than_s is not None:
            where.append("store_time < ?")
            args.append((now if now is not None else time.time()) - older_than_s)
        if tag is not None:
            where.append("tag = ?")
            args.append(tag)
        condition = " AND ".join(where)
        if dry_run:
            ((n,),) = self._cache._sql(f"SELECT COUNT(*) FROM Cache WHERE {condition}", args).fetchall()
            return int(n)
        self._cache._sql("CREATE INDEX IF NOT EXISTS Cache_store_time ON Cache (store_time)")
        # diskcache's batched delete pages with args[arg_index] = row[row_index]: we page on
        # store_time (>=, so rows sharing a time across a page boundary are not skipped).
        select = (
            f"SELECT rowid, store_time, filename FROM Cache WHERE store_time >= ? AND {condition}"
            " ORDER BY store_time LIMIT ?"
        )
        return int(self._cache._select_delete(select, [0.0, *args, 1000], row_index=1, arg_index=0, retry=True))

    def clear(self) -> int:
        """Remove every entry (value files too); return how many. The settings stay: size limit,
        eviction policy, and the lifetime hits, misses and savings."""
        removed = int(self._cache.clear(retry=True))
        # An earlier run's .partial must not bring back what the user just cleared.
        with contextlib.suppress(sqlite3.Error):  # no table: no run left a .partial
            self._cache._sql("DELETE FROM llmbatch_partial_files")
        return removed

    def entries(
        self,
        *,
        tag: str | None = None,
        stored_before: float | None = None,
        stored_after: float | None = None,
        broken: bool = False,
        key_prefix: str | None = None,
    ) -> Iterator[Stored]:
        """What is stored, oldest first, a thousand rows at a time (flat memory over millions; the
        filters are SQL on the index, so a filtered export reads only what it writes)."""
        sql = self._cache._sql
        fetch = self._cache.disk.fetch
        # The page's start as a range SQLite can seek to on the store_time index (store_time >= ?);
        # with the OR alone it scanned the index from the start for every page: quadratic, 70 s
        # of a 100 s verify over a million entries (bench/verify.py).
        where = ["raw = 1", "store_time >= ?", "(store_time > ? OR rowid > ?)"]
        filters: list[Any] = []
        if tag is not None:
            where.append("tag = ?")
            filters.append(tag)
        if stored_before is not None:
            where.append("store_time < ?")
            filters.append(stored_before)
        if stored_after is not None:
            where.append("store_time > ?")
            filters.append(stored_after)
        if key_prefix is not None:
            # A range on diskcache's (key, raw) index, not LIKE (which would read every row). Keys
            # compare as UTF-8 bytes; no key goes on past U+10FFFF.
            where.append("key >= ? AND key < ?")
            filters += [key_prefix, key_prefix + "\U0010ffff"]
        columns = "rowid, store_time, key, tag, expire_time, mode, filename, value"
        select = f"SELECT {columns} FROM Cache WHERE {' AND '.join(where)} ORDER BY store_time, rowid LIMIT 1000"
        last = (-1.0, -1)
        while True:
            rows = sql(select, (last[0], last[0], last[1], *filters)).fetchall()
            if not rows:
                break
            now = time.time()
            for rowid, store_time, key, row_tag, expire_time, mode, filename, value in rows:
                last = (store_time, rowid)
                if not isinstance(store_time, float | int):
                    continue  # a damaged time (text sorts after every number): the pass below
                item = self._item(key, row_tag, store_time, expire_time, mode, filename, value, fetch, now)
                if broken or (item.problem is None and (item.expires_at is None or item.expires_at >= now)):
                    yield item
        if broken and key_prefix is None and tag is None and stored_before is None and stored_after is None:
            # Rows no page above reaches: a time that is not a number, or a key that is not text.
            # Damaged, so shown to verify (which can remove them), never served.
            for (key,) in sql(
                "SELECT key FROM Cache WHERE raw = 0 OR typeof(store_time) NOT IN ('real', 'integer')"
            ).fetchall():
                text = key if isinstance(key, str) else repr(key)
                yield Stored(text, None, None, 0.0, None, problem="a damaged row (its key or time is not readable)")

    def _item(
        self,
        key: str,
        tag: Any,
        store_time: float,
        expire_time: Any,
        mode: int,
        filename: Any,
        value: Any,
        fetch: Any,
        now: float,
    ) -> Stored:
        """One row as a Stored item; a row whose parts are not what diskcache writes has a problem."""
        tag = tag if isinstance(tag, str) else None
        if expire_time is not None and not isinstance(expire_time, float | int):
            return Stored(key, None, tag, store_time, None, problem="a damaged expiry time")
        try:
            entry = fetch(mode, filename, value, False)
        except (CorruptEntry, OSError, TypeError, ValueError) as exc:
            return Stored(key, None, tag, store_time, expire_time, problem=str(exc) or type(exc).__name__)
        return Stored(key, entry, tag, store_time, expire_time)

    def load(self, items: Iterable[Stored]) -> Loaded:
        """File entries a transaction per thousand, each with the time it was first stored and its
        expiry, keeping the newer answer where the key is already here."""
        loaded = Loaded()
        batch: list[Stored] = []
        for item in items:
            batch.append(item)
            if len(batch) >= 1000:
                self._load_batch(batch, loaded)
                batch = []
        if batch:
            self._load_batch(batch, loaded)
        return loaded

    def _load_batch(self, batch: list[Stored], loaded: Loaded) -> None:
        cache = self._current()
        held: dict[str, float] = {}
        keys = [item.key for item in batch]
        for at in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[at : at + 500]
            marks = ",".join("?" * len(chunk))
            for key, store_time in cache._sql(
                f"SELECT key, store_time FROM Cache WHERE raw = 1 AND key IN ({marks})", chunk
            ).fetchall():
                held[key] = store_time
        try:
            with cache.transact(retry=True):
                for item in batch:
                    assert item.entry is not None, "only decoded entries are loaded"
                    if item.key in held and held[item.key] >= item.stored_at:
                        loaded.kept += 1
                        continue
                    if item.key in held:
                        loaded.replaced += 1
                    else:
                        loaded.added += 1
                    held[item.key] = item.stored_at  # a later record of the same key in this batch
                    cache.set(item.key, item.entry, tag=item.tag, retry=True)
                    # diskcache stamps rows with now: give the entry back its own age and expiry.
                    cache._sql(
                        "UPDATE Cache SET store_time = ?, expire_time = ? WHERE raw = 1 AND key = ?",
                        (item.stored_at, item.expires_at, item.key),
                    )
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot write to the cache at {self.directory}: {exc}") from None

    def remove(self, keys: Iterable[str]) -> int:
        """Take out the entries under ``keys``, broken or expired ones too (diskcache's own delete
        skips an expired row, which verify --repair must remove); how many. One transaction per
        call, value files included (diskcache's cleanup removes them once it commits)."""
        cache = self._current()
        removed = 0
        try:
            with cache._transact(retry=True) as (sql, cleanup):
                for key in keys:
                    for rowid, filename in sql(
                        "SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1", (key,)
                    ).fetchall():
                        sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                        cleanup(filename)
                        removed += 1
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot remove from the cache at {self.directory}: {exc}") from None
        return removed

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
