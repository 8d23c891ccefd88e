"""The signer's gRPC contract (proto/hanzo/registry/v1/signer.proto) on both assemblies: `Sign` makes the
same cosign tag-scheme signature as the API and the CLI, which the real `cosign verify --key` accepts, and
`Verify` reports it; bad requests get the right status codes."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest

from services.core.proto.hanzo.registry.v1 import signer_pb2, signer_pb2_grpc
from services.core.runtime import start_grpc
from services.core.signing.keys import ManagedKeys
from services.signer import service as signer
from tests.conftest import infra
from tests.integration.conftest import ASSEMBLIES
from tests.integration.oci import push_image
from tests.integration.signer_env import signer_env


@pytest.mark.parametrize("kind", [a if isinstance(a, str) else a.values[0] for a in ASSEMBLIES])
async def test_grpc_sign_and_verify(kind: str, tmp_path: Path) -> None:
    async with signer_env(kind, tmp_path) as env:
        digest, _ = await push_image(env.client, "grpc/app", "v1")
        verifier = signer.build_verifier(env.c)
        keys: ManagedKeys = verifier.trust.keys
        await keys.setup()
        key = await keys.create("grpc", "release", "ecdsa-p256", actor="test")
        uri = "hanzo-kms://projects/grpc/keys/release"
        server, port = await start_grpc(
            "127.0.0.1:0",
            [lambda s: signer_pb2_grpc.add_SignerServicer_to_server(signer.SignerServicer(env.c, verifier), s)],  # type: ignore[no-untyped-call]
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = signer_pb2_grpc.SignerStub(channel)  # type: ignore[no-untyped-call]
                signed = await stub.Sign(signer_pb2.SignRequest(repository="grpc/app", digest=digest, key_id=uri,
                                                                actor="ci"))
                assert signed.signature_digest.startswith("sha256:")
                missing = "hanzo-kms://projects/grpc/keys/missing"
                for bad, code in (
                    (signer_pb2.SignRequest(repository="grpc/app", digest=digest, key_id=missing),
                     grpc.StatusCode.NOT_FOUND),
                    (signer_pb2.SignRequest(repository="grpc/app", digest=digest, key_id="not-a-uri"),
                     grpc.StatusCode.INVALID_ARGUMENT),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as exc:
                        await stub.Sign(bad)
                    assert exc.value.code() == code
                # The signer's consumer discovers the pushed signature; Verify then reports it.
                async with asyncio.timeout(30):
                    while True:
                        verified = await stub.Verify(signer_pb2.VerifyRequest(repository="grpc/app", digest=digest))
                        if any(c.signature_digest == signed.signature_digest for c in verified.signatures):
                            break
                        await asyncio.sleep(0.2)
        finally:
            await server.stop(None)
        # The real cosign accepts what gRPC signed.
        (tmp_path / "release.pub").write_text(key.versions[-1].public_key)
        server_url = f"{env.client.host}:{env.client.port}"
        proc = await asyncio.to_thread(  # the registry answers on this test's event loop
            subprocess.run,
            [infra("HANZO_TOOL_COSIGN"), "verify", "--key", str(tmp_path / "release.pub"), "--insecure-ignore-tlog",
             "--allow-insecure-registry", "--allow-http-registry", f"{server_url}/grpc/app@{digest}"],
            capture_output=True, timeout=120, check=False, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
