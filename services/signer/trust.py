"""Trust material for one repository: the effective policy's keys and identities, the namespace's managed
keys, the configured Sigstore roots and transparency-log keys, and the Notary trust store and policy (files read
once, then cached)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from services.core.policy.document import PolicyDocument
from services.core.policy.merge import effective
from services.core.policy.store import PolicyStore, PolicyTarget
from services.core.settings import Settings
from services.core.signing.keys import ManagedKeys, key_id
from services.signer.crypto import load_certificates
from services.signer.notation import NotationTrust, load_trust
from services.signer.tlog import LogKey, load_log_keys, load_trusted_root
from services.signer.verdict import CosignTrust, Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Trust:
    policy: PolicyDocument
    cosign: CosignTrust
    notation: NotationTrust


class TrustSource:
    def __init__(self, settings: Settings, policies: PolicyStore, keys: ManagedKeys) -> None:
        self.settings = settings
        self.policies = policies
        self.keys = keys
        self._roots: list[x509.Certificate] | None = None
        self._log_keys: dict[str, LogKey] | None = None
        self._root_file: tuple[list[x509.Certificate], dict[str, LogKey]] | None = None
        self._notation: NotationTrust | None = None

    def roots(self) -> list[x509.Certificate]:
        if self._roots is None:
            path = self.settings.signer.sigstore_roots
            try:
                self._roots = load_certificates(path.read_bytes()) if path is not None else []
            except (OSError, ValueError) as exc:
                log.error("signer.sigstore_roots %s is unreadable (%s): keyless signatures will not verify", path, exc)
                self._roots = []
            self._roots += self._trusted_root()[0]
        return self._roots

    def log_keys(self) -> dict[str, LogKey]:
        if self._log_keys is None:
            path = self.settings.signer.rekor_public_keys
            try:
                self._log_keys = load_log_keys(path.read_bytes()) if path is not None else {}
            except (OSError, ValueError) as exc:
                log.error("signer.rekor_public_keys %s is unreadable (%s): keyless signatures are checked at the "
                          "time of the check, not when they were logged", path, exc)
                self._log_keys = {}
            self._log_keys.update(self._trusted_root()[1])
        return self._log_keys

    def _trusted_root(self) -> tuple[list[x509.Certificate], dict[str, LogKey]]:
        if self._root_file is None:
            path = self.settings.signer.sigstore_trusted_root
            try:
                self._root_file = load_trusted_root(path.read_bytes()) if path is not None else ([], {})
            except (OSError, ValueError) as exc:
                log.error("signer.sigstore_trusted_root %s is unreadable (%s): its roots and log keys are not used",
                          path, exc)
                self._root_file = ([], {})
        return self._root_file

    def notation(self) -> NotationTrust:
        if self._notation is None:
            s = self.settings.signer
            try:
                self._notation = load_trust(s.notation_trust_store, s.notation_trust_policy)
            except (OSError, ValueError) as exc:
                log.error("the Notary trust store or policy is unreadable (%s): Notary signatures will not verify",
                          exc)
                self._notation = NotationTrust()
        return self._notation

    async def policy(self, repository: str) -> PolicyDocument:
        namespace = repository.partition("/")[0]
        ns = await self.policies.get(PolicyTarget(namespace))
        repo = await self.policies.get(PolicyTarget(namespace, repository))
        return effective(self.settings.policy.default, namespace=ns.document if ns else None,
                         repository=repo.document if repo else None)

    async def for_repository(self, repository: str) -> Trust:
        policy = await self.policy(repository)
        keys: dict[str, PublicKeyTypes] = {}
        for pem in policy.signing.keys:
            public = load_pem_public_key(pem.encode())
            keys[key_id(public)] = public
        for managed in await self.keys.list(repository.partition("/")[0]):
            for version in managed.versions:
                keys.setdefault(version.key_id, load_pem_public_key(version.public_key.encode()))
        identities = tuple(Identity(i.issuer, i.subject) for i in policy.signing.identities)
        return Trust(policy, CosignTrust(keys, identities, self.roots(), self.log_keys()), self.notation())
