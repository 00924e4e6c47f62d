"""What a run would do and cost, from the store alone: ``llmbatch plan``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmbatch.app.batches import held_by_jobs
from llmbatch.app.runconfig import RunConfig, effective_defaults
from llmbatch.engine import LOOKUP_CHUNK
from llmbatch.input import (
    read_requests,
)
from llmbatch.input.routes import route_order

__all__ = ["Plan", "plan"]


@dataclass
class Plan:
    """What a run would do, from the cache alone: ``llmbatch run --dry-run``."""

    prompts: int = 0
    hits: int = 0
    duplicates: int = 0
    calls: int = 0
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    estimated_cost_usd: float | None = 0.0
    unpriced_models: list[str] = field(default_factory=list)
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per way a model was chosen (``"route N"``, ``"line"``, ``"--model"``): the lines it took, the
    #: calls they would make, and per model their estimated tokens and cost. Empty without routes.
    by_route: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The cascade: which answers fail their check is only known once they come back, so the plan gives
    #: a range. ``escalations``: lines that may be asked again; the cost if every one of them is.
    escalations: int = 0
    estimated_cost_max_usd: float | None = 0.0
    #: ``--batch-api``: the costs are at the Batch API's prices (``pricing.BATCH_MULTIPLIER``).
    batch_api: bool = False
    #: Misses a Batch-API job already submitted (by an earlier ``--no-wait`` run, or one that stopped)
    #: holds: a ``--batch-api`` run collects them and pays nothing more; a run without it stops at
    #: the first of them rather than pay for it again.
    in_jobs: int = 0
    #: With ``--semantic``: of ``hits``, those a near-identical prompt's answer would serve (else None).
    semantic_hits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "hits": self.hits,
            "duplicates": self.duplicates,
            "calls": self.calls,
            "estimated_input_tokens": self.estimated_input_tokens,
            "estimated_output_tokens": self.estimated_output_tokens,
            "estimated_cost_usd": None if self.estimated_cost_usd is None else round(self.estimated_cost_usd, 10),
            "unpriced_models": self.unpriced_models,
            "by_model": self.by_model,
            "by_route": self.by_route,
            "escalations": self.escalations,
            "estimated_cost_max_usd": None
            if self.estimated_cost_max_usd is None
            else round(self.estimated_cost_max_usd, 10),
            "batch_api": self.batch_api,
            **({"in_jobs": self.in_jobs} if self.batch_api or self.in_jobs else {}),
            **({"semantic_hits": self.semantic_hits} if self.semantic_hits is not None else {}),
        }


def plan(config: RunConfig) -> Plan:
    """Count hits, duplicates and the calls a run would make, and estimate their tokens and cost,
    without calling anyone. Output tokens: ``max_tokens`` where set, else the average completion
    of the cached answers of that model (or of all cached answers, or 256)."""
    from itertools import islice

    from llmbatch.answers import failed_check
    from llmbatch.keys import key_material, request_key
    from llmbatch.limits import DEFAULT_COMPLETION_TOKENS, estimate_split
    from llmbatch.pricing import BATCH_MULTIPLIER, estimate_cost, usage_tokens

    options = config.options
    destination = config.destination
    multiplier = BATCH_MULTIPLIER if config.batch is not None else 1.0

    cache = None
    place = config.store_place
    if options.cache_mode in ("normal", "only") and place.exists():
        cache = place.open(create=False)
        if config.semantic is not None:
            from llmbatch.store.semantic import SemanticStore  # the model and the index only when asked for

            cache = SemanticStore(cache, place.local_directory, config.semantic)
    result = Plan(batch_api=config.batch is not None, semantic_hits=0 if config.semantic is not None else None)
    pending: set[str] = set()
    # Keys record their endpoint, so a job's keys can only be this run's own requests.
    in_jobs = held_by_jobs(place)
    # per (route, model): [input tokens, output tokens with a cap, calls without a cap (times n),
    # completion tokens of hits, hits with usage]
    models: dict[tuple[str, str], list[int]] = {}
    routes: dict[str, dict[str, Any]] = {}  # per route: lines, calls
    escalations: dict[str, list[int]] = {}  # per escalate model: lines, input tokens, capped output, uncapped
    try:
        requests = read_requests(config.input.path, effective_defaults(config), source=config.input.source)
        while chunk := list(islice(requests, LOOKUP_CHUNK)):
            keyed = [(r, request_key(r, destination.key_endpoint(r.provider))) for r in chunk]
            # A fallback's answer is kept under the key of the model that gave it, and a rerun
            # serves it (the resolver looks the chain up before calling): so must the plan.
            chains = {
                key: [
                    request_key(a, destination.key_endpoint(a.provider))
                    for a in map(r.ask_instead, range(len(r.fallback)))
                ]
                for r, key in keyed
                if r.fallback
            }
            wanted = [k for _, k in keyed] + [k for chain in chains.values() for k in chain]
            found = cache.get_many(wanted) if cache is not None else {}
            near = getattr(cache, "get_near", None)  # --semantic: as the resolver asks, for the exact misses
            if near is not None and len(found) < len(keyed):
                endpoint = destination.key_endpoint
                found.update(near([(k, key_material(r, endpoint(r.provider))) for r, k in keyed if k not in found]))
            for request, key in keyed:
                result.prompts += 1
                acc = models.setdefault((request.route, request.model_ref), [0, 0, 0, 0, 0])
                taken = routes.setdefault(request.route, {"lines": 0, "calls": 0})
                taken["lines"] += 1
                entry = found.get(key) or next((found[k] for k in chains.get(key, ()) if k in found), None)
                if request.escalate_to is not None and key not in pending:
                    response = entry.get("response") if entry is not None else None
                    if entry is None or failed_check(response, request.params, request.escalate_on):
                        _may_escalate(escalations, request)
                if entry is not None:
                    result.hits += 1
                    if "semantic" in entry and result.semantic_hits is not None:
                        result.semantic_hits += 1
                    _, completion, _ = usage_tokens(entry.get("usage"))
                    acc[3] += completion
                    acc[4] += 1
                    continue
                if key in pending:
                    result.duplicates += 1
                    continue
                pending.add(key)
                if key in in_jobs:
                    result.in_jobs += 1
                    continue
                result.calls += 1
                taken["calls"] += 1
                prompt, _ = estimate_split(request.messages, request.params, None)
                acc[0] += prompt
                cap = request.output_cap
                if cap is not None:
                    acc[1] += cap
                else:
                    acc[2] += int(request.params.get("n") or 1)
    finally:
        if cache is not None:
            cache.close()
    all_hits = sum(a[4] for a in models.values())
    overall = sum(a[3] for a in models.values()) / all_hits if all_hits else DEFAULT_COMPLETION_TOKENS
    # The average completion of a model's hits, whatever route they came by.
    hit_tokens: dict[str, list[int]] = {}
    for (_, model_ref), acc in models.items():
        seen = hit_tokens.setdefault(model_ref, [0, 0])
        seen[0] += acc[3]
        seen[1] += acc[4]
    total_cost: float | None = 0.0
    for (route, model_ref), (prompt, capped, uncapped, _, _) in models.items():
        tokens, count = hit_tokens[model_ref]
        output = capped + int(uncapped * (tokens / count if count else overall))
        result.estimated_input_tokens += prompt
        result.estimated_output_tokens += output
        provider, model = model_ref.split(":", 1)
        cost = (
            estimate_cost(provider, model, prompt, output, multiplier=multiplier, prices=options.prices)
            if (prompt or output)
            else 0.0
        )
        if cost is None and model_ref not in result.unpriced_models:
            result.unpriced_models.append(model_ref)
        elif cost is not None and total_cost is not None:
            total_cost += cost
        row = {"input_tokens": prompt, "output_tokens": output, "cost_usd": cost}
        _add(result.by_model.setdefault(model_ref, {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}), row)
        routes[route].setdefault("by_model", {})[model_ref] = row
    result.estimated_cost_usd = None if result.unpriced_models else total_cost
    result.estimated_cost_max_usd = result.estimated_cost_usd
    for model_ref, (lines, prompt, capped, uncapped) in escalations.items():
        tokens, count = hit_tokens.get(model_ref, [0, 0])
        output = capped + int(uncapped * (tokens / count if count else overall))
        provider, model = model_ref.split(":", 1)
        cost = estimate_cost(provider, model, prompt, output, multiplier=multiplier, prices=options.prices)
        result.escalations += lines
        if cost is None and model_ref not in result.unpriced_models:
            result.unpriced_models.append(model_ref)
        if cost is None or result.estimated_cost_max_usd is None:
            result.estimated_cost_max_usd = None
        else:
            result.estimated_cost_max_usd += cost
    if any(r.startswith("route ") for r in routes):
        for taken in routes.values():
            costs = [row["cost_usd"] for row in taken["by_model"].values()]
            taken["cost_usd"] = None if None in costs else sum(costs)
        result.by_route = dict(sorted(routes.items(), key=lambda item: route_order(item[0])))
    return result


def _may_escalate(escalations: dict[str, list[int]], request: Any) -> None:
    """A line the cascade may ask again of its route's ``escalate.to``: counted at that model's cost."""
    from llmbatch.limits import estimate_split

    acc = escalations.setdefault(request.escalate_to, [0, 0, 0, 0])
    acc[0] += 1
    acc[1] += estimate_split(request.messages, request.params, None)[0]
    cap = request.output_cap
    if cap is not None:
        acc[2] += cap
    else:
        acc[3] += int(request.params.get("n") or 1)


def _add(total: dict[str, Any], row: dict[str, Any]) -> None:
    total["input_tokens"] += row["input_tokens"]
    total["output_tokens"] += row["output_tokens"]
    cost = row["cost_usd"]
    total["cost_usd"] = None if cost is None or total["cost_usd"] is None else total["cost_usd"] + cost
