"""Managed signing keys (`hanzo-kms://projects/<namespace>/keys/<name>`): created and rotated by namespace
admins, private halves sealed with the master key (services/core/secrets.py), in the `signer_keys`
collection. Rotation adds a version; signing uses the newest; every version's public key stays listed, so
signatures made before a rotation keep verifying."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from services.core.secrets import MasterKeyMissingError, SecretBox
from services.core.storage.documents import DocumentStore, DuplicateKeyError, Index

KEYS = "signer_keys"
Algorithm = Literal["ecdsa-p256", "ecdsa-p384", "rsa-3072", "ed25519"]
ALGORITHMS: tuple[str, ...] = ("ecdsa-p256", "ecdsa-p384", "rsa-3072", "ed25519")
KEY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
URI = re.compile(r"^hanzo-kms://projects/(?P<namespace>[^/]+)/keys/(?P<name>[^/]+)$")


class KeyExistsError(Exception):
    pass


class KeyUnknownError(Exception):
    pass


class KeyUriInvalidError(ValueError):
    pass


def key_uri(namespace: str, name: str) -> str:
    return f"hanzo-kms://projects/{namespace}/keys/{name}"


def parse_key_uri(uri: str) -> tuple[str, str]:
    """(namespace, name) of a `hanzo-kms://projects/<namespace>/keys/<name>` URI; KeyUriInvalidError else."""
    match = URI.match(uri)
    if match is None:
        raise KeyUriInvalidError(f"{uri[:200]!r} is not a key URI (hanzo-kms://projects/<namespace>/keys/<name>)")
    return match["namespace"], match["name"]


def key_id(public_key: PublicKeyTypes) -> str:
    """`sha256:<hex>` of the key's SubjectPublicKeyInfo (DER): the id results and policies compare."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def pem_key_id(pem: str) -> str:
    return key_id(serialization.load_pem_public_key(pem.encode()))


def public_pem(public_key: PublicKeyTypes) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def generate(algorithm: str) -> PrivateKeyTypes:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")


@dataclass(frozen=True, slots=True)
class KeyVersion:
    version: int
    created: float
    public_key: str
    key_id: str


@dataclass(frozen=True, slots=True)
class ManagedKey:
    namespace: str
    name: str
    algorithm: str
    created: float
    created_by: str
    versions: tuple[KeyVersion, ...]

    @property
    def uri(self) -> str:
        return key_uri(self.namespace, self.name)

    @property
    def current(self) -> KeyVersion:
        return self.versions[-1]


def _record(doc: dict[str, Any]) -> ManagedKey:
    versions = tuple(KeyVersion(v["version"], v["created"], v["public_key"], v["key_id"]) for v in doc["versions"])
    return ManagedKey(doc["namespace"], doc["name"], doc["algorithm"], doc["created"], doc.get("created_by", ""),
                      versions)


class ManagedKeys:
    """The `signer_keys` collection. `box` is None when no master key is configured: keys can then be read
    (public halves) but neither created, rotated nor used."""

    def __init__(self, docs: DocumentStore, box: SecretBox | None, *, clock: Any = time.time) -> None:
        self.docs = docs
        self.box = box
        self._clock = clock

    async def setup(self) -> None:
        await self.docs.ensure_collection(KEYS, [Index(("namespace",))])

    def _box(self) -> SecretBox:
        if self.box is None:
            raise MasterKeyMissingError("no master key is configured (signer.master_key): managed keys are off")
        return self.box

    def _version(self, uri: str, version: int, private: PrivateKeyTypes, now: float) -> dict[str, Any]:
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        public = private.public_key()
        return {"version": version, "created": now, "public_key": public_pem(public), "key_id": key_id(public),
                "private": self._box().seal(pem, context=f"{uri}#{version}")}

    async def create(self, namespace: str, name: str, algorithm: str, *, actor: str) -> ManagedKey:
        if not KEY_NAME.match(name):
            raise ValueError("a key name is 1-63 lower-case letters, digits, '.', '_' or '-'")
        self._box()
        uri, now = key_uri(namespace, name), self._clock()
        doc = {"_id": f"{namespace}/{name}", "namespace": namespace, "name": name, "algorithm": algorithm,
               "created": now, "created_by": actor, "versions": [self._version(uri, 1, generate(algorithm), now)]}
        try:
            await self.docs.insert(KEYS, doc)
        except DuplicateKeyError:
            raise KeyExistsError(f"key {uri} exists") from None
        return _record(doc)

    async def get(self, namespace: str, name: str) -> ManagedKey:
        doc = await self.docs.get(KEYS, f"{namespace}/{name}")
        if doc is None:
            raise KeyUnknownError(f"key {key_uri(namespace, name)} does not exist")
        return _record(doc)

    async def list(self, namespace: str) -> list[ManagedKey]:
        return [_record(d) for d in await self.docs.find(KEYS, {"namespace": namespace})]

    async def rotate(self, namespace: str, name: str) -> ManagedKey:
        """Add a version (the newest signs from now on): compare-and-set on the version count."""
        for _ in range(5):
            doc = await self.docs.get(KEYS, f"{namespace}/{name}")
            if doc is None:
                raise KeyUnknownError(f"key {key_uri(namespace, name)} does not exist")
            versions = list(doc["versions"])
            versions.append(self._version(key_uri(namespace, name), len(versions) + 1, generate(doc["algorithm"]),
                                          self._clock()))
            if await self.docs.update(KEYS, doc["_id"], {"versions": versions, "generation": len(versions)},
                                      expect={"generation": doc.get("generation")}):
                return await self.get(namespace, name)
        raise KeyExistsError(f"key {key_uri(namespace, name)} kept changing; retry")

    async def private_key(self, namespace: str, name: str) -> tuple[KeyVersion, PrivateKeyTypes]:
        """The newest version and its private key (opened with the master key)."""
        doc = await self.docs.get(KEYS, f"{namespace}/{name}")
        if doc is None:
            raise KeyUnknownError(f"key {key_uri(namespace, name)} does not exist")
        latest = doc["versions"][-1]
        pem = self._box().open(latest["private"], context=f"{key_uri(namespace, name)}#{latest['version']}")
        private = serialization.load_pem_private_key(pem, password=None)
        record = _record(doc)
        return record.current, private
