"""A semantic cache: a store that wraps another and also answers near-identical prompts (issue 15).

A wrong hit is worse than a miss, so a stored answer is served for another request only when all of
this holds:

1. the request missed exactly (exact hits come first, through the wrapped store's ``get_many``);
2. both requests ask for repeatable answers: ``temperature`` is 0 (set, not defaulted: a provider's
   default samples) and the last message is the user's, as text (:func:`prompt_and_scope`);
3. everything but the text of that last message is the same: provider, endpoint, model, the system
   prompt and every earlier message, every parameter (tools, response_format, ...), ``extra``,
   ``sample`` and the normalisation. This is the *scope*: a digest of the key material with that one
   text taken out. The candidate's scope is re-derived from the ``request`` its entry keeps, so an
   index that says otherwise is not believed;
4. the model sees all of both texts (:meth:`~llmbatch.store.semantic_index.Embedder.sees_all`: they fit
   in its window, and none of their characters is unknown to its vocabulary). Otherwise two prompts
   that differ only where the model does not look get one vector, and the guards look for a few kinds
   of words only. Such a prompt is not embedded at all: it is looked up exactly, like any other;
5. the cosine similarity of the two texts' embeddings is at least the threshold;
6. the guards agree (:mod:`llmbatch.store.semantic_guards`; ``guards=False`` turns them off, which is
   riskier).

A hit is the matched entry's answer with ``semantic: {similarity, matched_key}`` added (the entry
itself is not changed, nor stored again): the resolver reports it as ``hit: "semantic"``.

Each stored prompt is embedded once, and only if a lookup ever needs it: an answer stored through
this store gets a row beside it (its scope), with the vector its lookup made when there was one; a
prompt stored without one (its scope had nothing stored then, or it was stored without
``--semantic``: found when the store holds entries the rows do not) is embedded the first time a
lookup searches its scope. So a run whose scopes hold nothing embeds nothing. The rows live beside
the store's directory, under ``semantic/<model id>/`` (:mod:`llmbatch.store.semantic_index`, the
only module that imports the model and the index libraries, and only when ``--semantic`` is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch.errors import UsageError
from llmbatch.keys import canonical_json
from llmbatch.model.entry import CacheEntry, servable
from llmbatch.model.stats import Lookups
from llmbatch.store.base import Loaded, ResponseStore, Stored, StoreStats
from llmbatch.store.semantic_guards import disagreements, signature

if TYPE_CHECKING:
    from llmbatch.store.semantic_index import Embedder, VectorIndex

__all__ = ["DEFAULT_THRESHOLD", "SemanticSettings", "SemanticStore", "prompt_and_scope", "semantic_counts"]

#: Chosen on bench/data/semantic_pairs.jsonl with the guards on (bench/semantic.py, BENCHMARKS.md): none
#: of the tuning pairs that need different answers is served from 0.86 up; 0.90 leaves a margin. Over
#: all 160 (held-out ones too) it serves 1 (0.6 %), with 74.4 % recall; 0.96 and up serve none.
DEFAULT_THRESHOLD = 0.90
#: The index proposes this many neighbours; the ones outside the scope are dropped after.
CANDIDATES = 16
#: Vectors made by lookups, kept until their answers are stored (so they are not embedded twice).
_PENDING_MAX = 8192
#: Stored prompts embedded at most per scope and lookup (a catch-up is spread over lookups).
_FILL_MAX = 2048
SCOPE_VERSION = "s1"


@dataclass(frozen=True, slots=True)
class _Lookup:
    """One lookup's work: the asked ``(key, text, scope)``, their key material, and the stored
    ``(key, text)`` of their scopes to embed first."""

    asked: list[tuple[str, str, str]]
    materials: dict[str, Mapping[str, Any]]
    stored: list[tuple[str, str]]
    made: dict[str, Any]  # vectors an earlier lookup made for asked keys (kept for their answers)
    guards: dict[str, str | None]  # what the guards see in each asked text (None: guards off)

    @property
    def texts(self) -> list[str]:
        asked = [text for key, text, _ in self.asked if key not in self.made]
        return [text for _, text in self.stored] + asked


@dataclass(frozen=True, slots=True)
class SemanticSettings:
    """``run --semantic``'s options."""

    threshold: float = DEFAULT_THRESHOLD
    guards: bool = True
    model_dir: Path | None = None
    audit: int = 0  # --semantic-audit N: semantic hits kept (a uniform sample) to be asked again


def prompt_and_scope(material: Mapping[str, Any]) -> tuple[str, str] | None:
    """The text a neighbour may differ in, and the digest of everything else, for key material
    (:func:`llmbatch.keys.key_material`); None when its answer is not meant to repeat, or the last
    message is not the user's text, so that no neighbour may answer it. Pure."""
    params = material.get("params")
    if not isinstance(params, dict) or params.get("temperature") not in (0, 0.0) or params.get("temperature") is False:
        return None
    if params.get("n") not in (None, 1):  # several choices are several draws: not one repeatable answer
        return None
    messages = material.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), str):
        return None
    text = last["content"]
    if not text.strip():
        return None
    rest = dict(material)
    rest["messages"] = [*messages[:-1], {**last, "content": None}]
    return text, f"{SCOPE_VERSION}:{hashlib.sha256(canonical_json(rest)).hexdigest()}"


def _load_index() -> Any:
    """:mod:`llmbatch.store.semantic_index`, or the one line that says which extra is missing."""
    try:
        from llmbatch.store import semantic_index
    except ImportError as exc:
        raise UsageError(f"--semantic needs the 'semantic' extra ({exc}): pip install 'llmbatch[semantic]'") from None
    return semantic_index


class SemanticStore:
    """A :class:`~llmbatch.store.base.ResponseStore` that is ``inner`` plus :meth:`get_near`."""

    def __init__(
        self,
        inner: ResponseStore,
        directory: Path,
        settings: SemanticSettings | None = None,
        *,
        embedder: Embedder | None = None,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.settings = settings or SemanticSettings()
        self._vectors: dict[str, tuple[str, Any]] = {}  # made by lookups, for the answers to come
        #: ``--semantic-audit``: (key, key material, the entry served) of a uniform sample of the hits
        self.audit_sample: list[tuple[str, dict[str, Any], CacheEntry]] = []
        self._hits_seen = 0
        self._random = random.Random()
        self.embedded = 0  # prompts embedded by this store (lookups, and stored prompts a lookup needed)
        self.caught_up = 0  # entries stored without --semantic that were recorded on opening
        try:
            module = _load_index()
            self.embedder = embedder or module.Embedder(self.settings.model_dir)
            self.index: VectorIndex = module.VectorIndex(directory / "semantic" / self.embedder.model_id)
            self._catch_up()
        except BaseException:
            if hasattr(self, "index"):
                self.index.close()
            inner.close()
            raise

    @property
    def recreated(self) -> bool:
        return self.inner.recreated

    @recreated.setter
    def recreated(self, value: bool) -> None:
        self.inner.recreated = value

    # -- near matches ------------------------------------------------------------------------

    def get_near(self, wanted: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, CacheEntry]:
        """For keys that missed, with their key material: the stored answers of near-identical
        requests, marked ``semantic`` (see the module docstring for every condition)."""
        lookup = self._plan(wanted)
        return {} if lookup is None else self._answer(lookup, self.embedder.embed(lookup.texts))

    async def get_near_async(self, wanted: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, CacheEntry]:
        """:meth:`get_near` for an event loop: the embedding (most of a lookup's time) is made in a
        worker thread (onnxruntime and tokenizers let go of the GIL), so that calls already in flight
        are answered and stored meanwhile. Everything else (the record, the stores) stays on the
        caller's thread; the resolver awaits one lookup at a time."""
        lookup = self._plan(wanted)
        if lookup is None:
            return {}
        return self._answer(lookup, await asyncio.to_thread(self.embedder.embed, lookup.texts))

    def _plan(self, wanted: Iterable[tuple[str, Mapping[str, Any]]]) -> _Lookup | None:
        """Which of ``wanted`` may be answered by a neighbour, and the texts to embed for them:
        the stored prompts of their scopes still waiting for a vector, then theirs."""
        asked: list[tuple[str, str, str]] = []
        materials: dict[str, Mapping[str, Any]] = {}
        guards: dict[str, str | None] = {}
        for key, material in wanted:
            found = prompt_and_scope(material)
            if found is None:
                continue
            # A scope with nothing stored cannot match, nor can stored prompts the guards would refuse
            # (other numbers, names, quotes in the same template): no embedding spent on the question.
            sign = signature(found[0]) if self.settings.guards else None
            if self.index.has_scope(found[1], sign):
                asked.append((key, *found))
                materials[key] = material
                guards[key] = sign
        if not asked:
            return None
        # A prompt the model would not see all of (longer than its window, or with characters its
        # vocabulary lacks) is left to the exact cache: its vector would be the same as that of a
        # prompt that differs only in what the model did not see, and the guards look for a few kinds
        # of words only. It is not embedded either. (Its stored answer is never a neighbour's: _match.)
        seen = self.embedder.sees_all([text for _, text, _ in asked])
        asked = [ask for ask, whole in zip(asked, seen, strict=True) if whole]
        if not asked:
            return None
        stored = dict(
            pair
            for scope, sign in {(scope, guards[key]) for key, _, scope in asked}
            for pair in self._waiting(scope, sign)
        )
        # A key asked again (the leading hits were looked for while validating, then the run asks)
        # keeps the vector made the first time.
        made = {key: self._vectors[key][1] for key, _, scope in asked if self._vectors.get(key, ("",))[0] == scope}
        return _Lookup(asked, materials, list(stored.items()), made, guards)

    def _answer(self, lookup: _Lookup, vectors: Any) -> dict[str, CacheEntry]:
        self.embedded += len(lookup.texts)
        filled = len(lookup.stored)
        if filled:
            self.index.fill([(key, vector) for (key, _), vector in zip(lookup.stored, vectors[:filled], strict=True)])
        hits: dict[str, CacheEntry] = {}
        fresh = iter(vectors[filled:])
        for key, text, scope in lookup.asked:
            vector = lookup.made[key] if key in lookup.made else next(fresh)
            self._vectors.pop(key, None)  # kept anew, as the newest
            if len(self._vectors) >= _PENDING_MAX:  # kept for the answer about to be stored, if it is
                self._vectors.pop(next(iter(self._vectors)))
            self._vectors[key] = (scope, vector)
            hit = self._match(text, scope, vector, lookup.guards[key])
            if hit is not None:
                hits[key] = hit
                self._keep_for_audit(key, lookup.materials[key], hit)
        return hits

    def _keep_for_audit(self, key: str, material: Mapping[str, Any], hit: CacheEntry) -> None:
        """Reservoir sampling: after any number of hits, each is in ``audit_sample`` with the same
        chance (all of them while there are at most ``settings.audit``)."""
        if self.settings.audit <= 0:
            return
        self._hits_seen += 1
        kept = (key, dict(material), hit)
        if len(self.audit_sample) < self.settings.audit:
            self.audit_sample.append(kept)
        else:
            at = self._random.randrange(self._hits_seen)
            if at < self.settings.audit:
                self.audit_sample[at] = kept

    def agreement(self, served: str | None, fresh: str | None) -> str | None:
        """Whether a fresh answer agrees with the one a semantic hit served: ``"identical"`` (the same
        text after whitespace normalisation), ``"similar"`` (their embeddings reach the threshold),
        or None."""
        if served is None or fresh is None:
            return "identical" if served == fresh else None
        if " ".join(served.split()) == " ".join(fresh.split()):
            return "identical"
        if not all(self.embedder.sees_all([served, fresh])):  # two long answers alike in their openings only
            return None
        a, b = self.embedder.embed([served, fresh])
        return "similar" if float(a @ b) >= self.settings.threshold else None

    def _waiting(self, scope: str, guards: str | None) -> list[tuple[str, str]]:
        """The stored prompts of ``scope`` that wait for a vector (stored while no lookup needed
        them), as ``(key, text)``: a bounded number per lookup, so that no lookup waits for a whole
        catch-up. Rows that do not say what their entry holds are dropped; prompts the model would
        not see all of are taken out of every scope."""
        keys = self.index.waiting(scope, _FILL_MAX, guards)
        if not keys:
            return []
        entries = self.inner.get_many(keys)
        texts: list[tuple[str, str]] = []
        for key in keys:
            found = prompt_and_scope((entries.get(key) or {}).get("request") or {})
            if found is not None and found[1] == scope:
                texts.append((key, found[0]))
        self.index.forget([key for key in keys if key not in dict(texts)])  # gone, or not what the row says
        whole = self.embedder.sees_all([text for _, text in texts])
        self.index.exclude([key for (key, _), seen in zip(texts, whole, strict=True) if not seen])
        return [pair for pair, seen in zip(texts, whole, strict=True) if seen]

    def _match(self, text: str, scope: str, vector: Any, guards: str | None) -> CacheEntry | None:
        for matched_key, similarity in self.index.search(vector, scope, count=CANDIDATES, guards=guards):
            if similarity < self.settings.threshold:
                break
            entry = self.inner.get(matched_key)
            if entry is None or not servable(matched_key, entry):
                continue
            stored = prompt_and_scope(entry.get("request") or {})
            if stored is None or stored[1] != scope:  # the entry, not the index, says what it answers
                continue
            if self.settings.guards and disagreements(text, stored[0]):
                continue
            if not self.embedder.sees_all([stored[0]])[0]:  # a vector filed before that rule: not trusted
                continue
            marked: CacheEntry = dict(entry)  # type: ignore[assignment]
            marked["semantic"] = {"similarity": round(min(similarity, 1.0), 4), "matched_key": matched_key}
            return marked
        return None

    # -- writes: a row per stored answer, its vector if a lookup made one -------------------

    def put(self, key: str, entry: CacheEntry, *, tag: str, ttl_s: float | None = None) -> None:
        self.inner.put(key, entry, tag=tag, ttl_s=ttl_s)
        self._index([(key, entry)])

    def put_many(self, items: list[tuple[str, CacheEntry, str]], *, ttl_s: float | None = None) -> None:
        self.inner.put_many(items, ttl_s=ttl_s)
        self._index([(key, entry) for key, entry, _ in items])

    def _index(self, items: list[tuple[str, CacheEntry]], *, guards: bool = True) -> None:
        """File a row for each stored answer: its scope, the vector its lookup made, and (``guards``)
        what the guards see in its prompt. Catching up leaves that unknown (it walks the whole
        store); such rows are compared with any question of their scope."""
        rows: list[tuple[str, str | None, Any]] = []
        signs: list[str | None] = []
        for key, entry in items:
            made = self._vectors.pop(key, None)
            found = prompt_and_scope(entry.get("request") or {})
            scope = None if found is None else found[1]
            rows.append((key, scope, made[1] if made is not None and made[0] == scope else None))
            signs.append(signature(found[0]) if found is not None and guards else None)
        self.index.add(rows, signs)

    def _catch_up(self) -> None:
        """Embed what the store holds and the vectors do not (answers stored without ``--semantic``,
        or by another machine), and drop vectors of entries gone. Only when the store's count is not
        the one seen last time: a store that did not change costs one count."""
        # Every key the store holds has one row beside it (with no vector when no neighbour may answer
        # it), so equal counts mean nothing to catch up. The count of the last walk is kept too: a store
        # whose count includes what it will not list (expired entries) is not walked on every open.
        count = self.inner.count()
        if count in (self.index.count(), self.index.meta("store_count")):
            return
        seen: set[str] = set()
        batch: list[tuple[str, CacheEntry]] = []
        known = self.index.known
        for item in self.inner.entries():
            seen.add(item.key)
            if item.entry is not None:
                batch.append((item.key, item.entry))
            if len(batch) >= 512:
                fresh = known(key for key, _ in batch)
                new = [pair for pair in batch if pair[0] not in fresh]
                self.caught_up += len(new)
                self._index(new, guards=False)
                batch = []
        fresh = known(key for key, _ in batch)
        new = [pair for pair in batch if pair[0] not in fresh]
        self.caught_up += len(new)
        self._index(new, guards=False)
        self.index.forget([key for key in self.index.all_keys() if key not in seen])
        self.index.set_meta("store_count", count)

    # -- counters ----------------------------------------------------------------------------

    def record_lookups(self, lookups: Mapping[str, Lookups]) -> None:
        semantic = sum(n.semantic for n in lookups.values())
        if semantic:
            self.index.set_meta("semantic_hits", int(self.index.meta("semantic_hits", 0)) + semantic)
            saved = sum(n.semantic_saved_usd for n in lookups.values())
            self.index.set_meta("semantic_saved_usd", float(self.index.meta("semantic_saved_usd", 0.0)) + saved)
        self.inner.record_lookups(lookups)

    def close(self) -> None:
        try:
            self.index.close()
        finally:
            self.inner.close()

    # -- everything else is the wrapped store's ----------------------------------------------

    def get(self, key: str) -> CacheEntry | None:
        return self.inner.get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        return self.inner.get_many(keys)

    def lease(self, keys: Iterable[str], owner: str, *, ttl_s: float, now: float | None = None) -> set[str]:
        return self.inner.lease(keys, owner, ttl_s=ttl_s, now=now)

    def renew(self, owner: str, *, ttl_s: float, now: float | None = None) -> None:
        self.inner.renew(owner, ttl_s=ttl_s, now=now)

    def release(self, keys: Iterable[str], owner: str) -> None:
        self.inner.release(keys, owner)

    def release_all(self, owner: str) -> None:
        self.inner.release_all(owner)

    def lease_owners(self) -> set[str]:
        return self.inner.lease_owners()

    def note_partial(self, identity: tuple[int, int], token: str) -> None:
        self.inner.note_partial(identity, token)

    def knows_partial(self, identity: tuple[int, int], token: str) -> bool:
        return self.inner.knows_partial(identity, token)

    def forget_partial(self, identity: tuple[int, int]) -> None:
        self.inner.forget_partial(identity)

    def stats(self) -> StoreStats:
        return self.inner.stats()

    def count(self) -> int:
        return self.inner.count()

    def purge(
        self, older_than_s: float | None, *, tag: str | None = None, dry_run: bool = False, now: float | None = None
    ) -> int:
        return self.inner.purge(older_than_s, tag=tag, dry_run=dry_run, now=now)

    def clear(self) -> int:
        return self.inner.clear()

    def entries(self, **kwargs: Any) -> Iterator[Stored]:
        return self.inner.entries(**kwargs)

    def load(self, items: Iterable[Stored]) -> Loaded:
        return self.inner.load(items)

    def remove(self, keys: Iterable[str]) -> int:
        return self.inner.remove(keys)

    def __enter__(self) -> SemanticStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def semantic_counts(directory: Path) -> dict[str, Any] | None:
    """``cache stats``: the semantic hits a store's runs counted over its life, and what they saved,
    read from the vectors' own database without loading any model (None: no semantic cache here)."""
    import sqlite3

    totals: dict[str, Any] = {"semantic_hits": 0, "semantic_saved_usd": 0.0, "prompts_embedded": 0}
    found = False
    for db in sorted((directory / "semantic").glob("*/vectors.db")):
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn,
        ):
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            totals["semantic_hits"] += int(meta.get("semantic_hits") or 0)
            totals["semantic_saved_usd"] += float(meta.get("semantic_saved_usd") or 0.0)
            totals["prompts_embedded"] += int(
                conn.execute("SELECT count(*) FROM vectors WHERE vector IS NOT NULL").fetchone()[0]
            )
            found = True
    return totals if found else None
