"""``run --semantic --semantic-audit N``: ask the provider again for a sample of the semantic hits
(issue 15).

The semantic store keeps a uniform sample of the hits it served during the run
(:attr:`~llmbatch.store.semantic.SemanticStore.audit_sample`: each hit's key, key material and the
entry served). Once the run is done, each is rebuilt as the request it was (the key material holds
all of it), asked again as ``--refresh`` would (a call, whatever is stored), and its fresh answer is
stored under the request's own exact key, so a rerun gets it as an exact hit. The report says how
many fresh answers agree with the served ones (the store decides: identical after whitespace
normalisation, or similar embeddings). The results file keeps what the run answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from llmbatch.engine import RunStats, live_resolver
from llmbatch.model.request import Request
from llmbatch.model.result import Result, first_choice

__all__ = ["AuditReport", "audit_semantic_hits"]


@dataclass
class AuditReport:
    asked: int = 0  # semantic hits asked again
    identical: int = 0
    similar: int = 0
    failed: int = 0  # asked again, but no fresh answer came (an error, a stop)
    spent_usd: float = 0.0
    #: Each hit asked again: its key, the key it was served from, and the verdict.
    checked: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agree(self) -> int:
        return self.identical + self.similar


def _request(material: dict[str, Any], at: int) -> Request:
    return Request(
        line=at,
        id=at,
        provider=material["provider"],
        model=material["model"],
        messages=material["messages"],
        params=material["params"],
        extra=material["extra"],
        sample=material["sample"],
        normalize=material.get("normalize"),
    )


async def audit_semantic_hits(provider: Any, store: Any, options: Any) -> AuditReport | None:
    """Ask the sampled semantic hits again through ``provider``; None when there is nothing to audit."""
    sample = list(getattr(store, "audit_sample", ()))
    if not sample:
        return None
    results: list[Result] = []
    stats = RunStats(total=len(sample))
    engine = live_resolver(
        provider, store=store, options=replace(options, cache_mode="refresh"), sink=results.append, stats=stats
    )
    requests = [_request(material, at) for at, (_, material, _) in enumerate(sample, start=1)]
    keys = [engine.key_of(request) for request in requests]
    await engine.run(request for request, key, (want, _, _) in zip(requests, keys, sample, strict=True) if key == want)
    report = AuditReport(spent_usd=stats.spent_usd)
    by_line = {result.line: result for result in results}
    for at, (key, _, served) in enumerate(sample, start=1):
        result = by_line.get(at)
        report.asked += 1
        if result is None or not result.ok:
            report.failed += 1
            verdict = "failed"
        else:
            verdict = store.agreement(first_choice(served.get("response"))[0], result.content) or "differs"
            report.identical += verdict == "identical"
            report.similar += verdict == "similar"
        report.checked.append({"key": key, "matched_key": served["semantic"]["matched_key"], "verdict": verdict})
    return report
