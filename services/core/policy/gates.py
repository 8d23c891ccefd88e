"""Pull gates: the ordered checks a manifest GET/HEAD runs after repository access, from metadata only.

Each gate (the scan gate, the signature gate) looks at the manifest and the effective policy of its
repository and either lets the pull through or refuses it with a reason. A platform manifest pulled by
digest is also refused when an index of the repository that lists it is refused, so an index's gate
cannot be bypassed by pulling its children one by one.

Decisions are cached per (repository, digest), and effective policies per repository, for
`ttl_seconds`: the pull path then costs no metadata read. `invalidate` drops what a change makes stale;
this process calls it on its own policy changes and on the scan and signature results it learns of,
and other replicas see a change within the TTL. Gates never call another service.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.core.errors import DeniedError
from services.core.policy.document import PolicyDocument
from services.core.storage.meta import ManifestRecord

PolicySource = Callable[[str, str], Awaitable[PolicyDocument]]
"""(namespace, repository) -> the effective policy document."""

ParentSource = Callable[[str, ManifestRecord], Awaitable[Sequence[ManifestRecord]]]
"""(repository, manifest) -> the indexes of the repository that list the manifest."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a gate refuses a pull: the gate, the policy rule that applies, and the worst reason."""

    gate: str
    rule: str
    reason: str

    def message(self, repository: str, digest: str) -> str:
        return f"pull of {repository}@{digest} refused by the {self.gate} gate ({self.rule}): {self.reason}"


class PullGate(Protocol):
    name: str

    def applies(self, policy: PolicyDocument) -> bool:
        """Whether the policy turns this gate on: a gate that is off costs nothing."""
        ...

    async def check(self, repository: str, manifest: ManifestRecord, policy: PolicyDocument) -> Refusal | None:
        """None lets the pull through. Reads metadata only."""
        ...


@dataclass(frozen=True, slots=True)
class _Entry:
    at: float
    refusal: Refusal | None


class PullGates:
    def __init__(
        self,
        gates: Sequence[PullGate],
        policies: PolicySource,
        parents: ParentSource,
        *,
        ttl_seconds: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gates = list(gates)
        self._policies = policies
        self._parents = parents
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._decisions: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._policy_cache: dict[str, tuple[float, PolicyDocument]] = {}

    def add(self, gate: PullGate) -> None:
        """Plug a gate in (the scanner's and signer's issues add theirs); order is the order added."""
        self.gates.append(gate)
        self.invalidate()

    async def check(self, namespace: str, repository: str, manifest: ManifestRecord) -> None:
        """Raise DeniedError when a gate refuses the pull of `manifest` (or of an index listing it)."""
        if not self.gates:
            return
        refusal = await self._decide(namespace, repository, manifest, include_parents=True)
        if refusal is not None:
            raise DeniedError(refusal.message(repository, str(manifest.digest)),
                              detail={"gate": refusal.gate, "rule": refusal.rule})

    async def _decide(self, namespace: str, repository: str, manifest: ManifestRecord, *,
                      include_parents: bool) -> Refusal | None:
        key = (repository, str(manifest.digest))
        now = self._clock()
        hit = self._decisions.get(key)
        if hit is not None and now - hit.at < self._ttl:
            return hit.refusal
        policy = await self._policy(namespace, repository, now)
        active = [g for g in self.gates if g.applies(policy)]
        refusal: Refusal | None = None
        for gate in active:
            refusal = await gate.check(repository, manifest, policy)
            if refusal is not None:
                break
        if refusal is None and active and include_parents:
            for parent in await self._parents(repository, manifest):
                inherited = await self._decide(namespace, repository, parent, include_parents=False)
                if inherited is not None:
                    refusal = Refusal(inherited.gate, inherited.rule,
                                      f"it is a platform manifest of the index {parent.digest}, which is refused: "
                                      f"{inherited.reason}")
                    break
        self._remember(key, _Entry(now, refusal))
        return refusal

    async def effective_policy(self, namespace: str, repository: str) -> PolicyDocument:
        """The repository's effective policy, from the cache the gates keep (the push path's tag rules use
        it too, so a policy change reaches both through one `invalidate`)."""
        return await self._policy(namespace, repository, self._clock())

    async def _policy(self, namespace: str, repository: str, now: float) -> PolicyDocument:
        cached = self._policy_cache.get(repository)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        policy = await self._policies(namespace, repository)
        if len(self._policy_cache) >= self._max:
            self._policy_cache.clear()
        self._policy_cache[repository] = (now, policy)
        return policy

    def _remember(self, key: tuple[str, str], entry: _Entry) -> None:
        self._decisions[key] = entry
        self._decisions.move_to_end(key)
        while len(self._decisions) > self._max:
            self._decisions.popitem(last=False)

    def invalidate(self, *, digest: str | None = None, namespace: str | None = None) -> None:
        """Forget decisions about `digest` (a new scan report or signature), or everything of `namespace`
        (a policy change), or everything."""
        if digest is not None:
            for key in [k for k in self._decisions if k[1] == digest]:
                del self._decisions[key]
            return
        if namespace is not None:
            prefix = namespace + "/"
            for key in [k for k in self._decisions if k[0].startswith(prefix)]:
                del self._decisions[key]
            for repo in [r for r in self._policy_cache if r.startswith(prefix)]:
                del self._policy_cache[repo]
            return
        self._decisions.clear()
        self._policy_cache.clear()
