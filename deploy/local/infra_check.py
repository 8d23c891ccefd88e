#!/usr/bin/env python3
"""Stdlib-only health probes for the local test infrastructure.

Used by deploy/local/infra-up.sh; no third-party Python packages needed.

  infra_check.py kafka HOST:PORT
      ApiVersions + Metadata request; healthy when the broker lists >= 1 broker.
  infra_check.py mongo HOST:PORT
      OP_MSG {ping: 1} against the admin db; healthy when ok == 1.
  infra_check.py postgres HOST:PORT USER DATABASE
      StartupMessage (trust auth) + simple query `SELECT 1`; healthy when the row comes back.
  infra_check.py s3 HOST:PORT ACCESS SECRET [--create BUCKET]... [--require BUCKET]...
      SigV4-signed ListBuckets (and PUT bucket for --create); healthy when every
      --require / --create bucket is listed and an object written to each reads back.

Exit status 0 = healthy, 1 = not healthy (reason on stderr).
"""

import datetime
import hashlib
import hmac
import http.client
import socket
import struct
import sys
import xml.etree.ElementTree as ET

TIMEOUT = 5.0


def _split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf.extend(chunk)
    return bytes(buf)


# --------------------------------------------------------------------- Kafka
def _kafka_request(sock, api_key, api_version, corr_id, body):
    client_id = b"hanzo-infra-check"
    header = struct.pack(">hhih", api_key, api_version, corr_id, len(client_id)) + client_id
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    resp = _recv_exact(sock, size)
    (rcorr,) = struct.unpack(">i", resp[:4])
    if rcorr != corr_id:
        raise ValueError("correlation id mismatch")
    return resp[4:]  # response header v0 for both requests used here


def check_kafka(addr):
    host, port = _split_addr(addr)
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        # ApiVersions v0: empty body; response: error_code, [api_key, min, max]
        resp = _kafka_request(sock, 18, 0, 1, b"")
        err, n = struct.unpack(">hi", resp[:6])
        if err != 0:
            raise ValueError(f"ApiVersions error_code={err}")
        versions = {}
        for i in range(n):
            k, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i: 12 + 6 * i])
            versions[k] = (lo, hi)
        if 3 not in versions:
            raise ValueError("broker does not advertise Metadata")
        lo, hi = versions[3]
        ver = max(lo, 4)
        if ver > min(hi, 8):  # v4..v8 = non-flexible encoding with identical broker layout
            raise ValueError(f"no usable Metadata version in [{lo},{hi}]")
        # Metadata v4..v8 request: topics=null (all), allow_auto_topic_creation=false
        # (v8 adds two booleans: include cluster/topic authorized operations)
        body = struct.pack(">ib", -1, 0)
        if ver >= 8:
            body += struct.pack(">bb", 0, 0)
        resp = _kafka_request(sock, 3, ver, 2, body)
        _throttle, nbrokers = struct.unpack(">ii", resp[:8])
        if nbrokers < 1:
            raise ValueError("metadata lists no brokers yet")
    return f"kafka ok: ApiVersions({len(versions)} apis), Metadata v{ver}: {nbrokers} broker(s)"


# --------------------------------------------------------------------- Mongo
def _cstring(data, off):
    end = data.index(b"\x00", off)
    return data[off:end].decode("utf-8", "replace"), end + 1


def _bson_decode(data, off=0):
    """Minimal BSON decoder (enough for server replies)."""
    (size,) = struct.unpack_from("<i", data, off)
    end = off + size - 1
    off += 4
    doc = {}
    while off < end:
        t = data[off]
        off += 1
        name, off = _cstring(data, off)
        if t == 0x01:
            (v,) = struct.unpack_from("<d", data, off); off += 8
        elif t in (0x02, 0x0D, 0x0E):
            (ln,) = struct.unpack_from("<i", data, off)
            v = data[off + 4: off + 4 + ln - 1].decode("utf-8", "replace"); off += 4 + ln
        elif t in (0x03, 0x04):
            (ln,) = struct.unpack_from("<i", data, off)
            v = _bson_decode(data, off)
            if t == 0x04:
                v = list(v.values())
            off += ln
        elif t == 0x05:
            (ln,) = struct.unpack_from("<i", data, off)
            v = data[off + 5: off + 5 + ln]; off += 5 + ln
        elif t == 0x07:
            v = data[off: off + 12].hex(); off += 12
        elif t == 0x08:
            v = data[off] != 0; off += 1
        elif t in (0x09, 0x11, 0x12):
            (v,) = struct.unpack_from("<q", data, off); off += 8
        elif t in (0x0A, 0x06, 0xFF, 0x7F):
            v = None
        elif t == 0x10:
            (v,) = struct.unpack_from("<i", data, off); off += 4
        elif t == 0x13:
            v = data[off: off + 16]; off += 16
        elif t == 0x0B:
            p, off = _cstring(data, off)
            o, off = _cstring(data, off)
            v = (p, o)
        else:
            raise ValueError(f"unsupported BSON type 0x{t:02x}")
        doc[name] = v
    return doc


def _bson_encode(items):
    out = bytearray()
    for k, v in items:
        kb = k.encode() + b"\x00"
        if isinstance(v, bool):
            out += b"\x08" + kb + (b"\x01" if v else b"\x00")
        elif isinstance(v, int):
            out += b"\x10" + kb + struct.pack("<i", v)
        elif isinstance(v, str):
            vb = v.encode() + b"\x00"
            out += b"\x02" + kb + struct.pack("<i", len(vb)) + vb
        else:
            raise TypeError(type(v))
    return struct.pack("<i", len(out) + 5) + bytes(out) + b"\x00"


def _op_msg(sock, req_id, items):
    doc = _bson_encode(items)
    body = struct.pack("<I", 0) + b"\x00" + doc  # flagBits, section kind 0
    header = struct.pack("<iiii", 16 + len(body), req_id, 0, 2013)
    sock.sendall(header + body)
    length, _rid, _resp_to, opcode = struct.unpack("<iiii", _recv_exact(sock, 16))
    payload = _recv_exact(sock, length - 16)
    if opcode != 2013:
        raise ValueError(f"unexpected opcode {opcode}")
    if payload[4] != 0:
        raise ValueError("unexpected OP_MSG section kind")
    return _bson_decode(payload, 5)


def check_mongo(addr):
    host, port = _split_addr(addr)
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        hello = _op_msg(sock, 1, [("hello", 1), ("$db", "admin")])
        if hello.get("ok") != 1:
            raise ValueError(f"hello failed: {hello}")
        ping = _op_msg(sock, 2, [("ping", 1), ("$db", "admin")])
        if ping.get("ok") != 1:
            raise ValueError(f"ping failed: {ping}")
    return f"mongo ok: hello maxWireVersion={hello.get('maxWireVersion')}, ping ok"


# ------------------------------------------------------------------ PostgreSQL
def _pg_messages(sock):
    """Backend messages (type, body) until ReadyForQuery; an ErrorResponse raises."""
    while True:
        kind = _recv_exact(sock, 1)
        (length,) = struct.unpack(">i", _recv_exact(sock, 4))
        body = _recv_exact(sock, length - 4)
        if kind == b"E":
            fields = dict((f[:1], f[1:]) for f in body.split(b"\x00") if f)
            raise ValueError(f"postgres error {fields.get(b'C', b'?').decode()}: {fields.get(b'M', b'').decode()}")
        if kind == b"R" and struct.unpack(">i", body[:4])[0] != 0:
            raise ValueError(f"postgres asks for authentication (code {struct.unpack('>i', body[:4])[0]}), not trust")
        yield kind, body
        if kind == b"Z":
            return


def check_postgres(addr, user, database):
    host, port = _split_addr(addr)
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        params = b"".join(k + b"\x00" + v.encode() + b"\x00" for k, v in ((b"user", user), (b"database", database)))
        startup = struct.pack(">i", 196608) + params + b"\x00"  # protocol 3.0
        sock.sendall(struct.pack(">i", len(startup) + 4) + startup)
        version = b"?"
        for kind, body in _pg_messages(sock):
            if kind == b"S" and body.startswith(b"server_version\x00"):
                version = body.split(b"\x00")[1]
        query = b"SELECT 1\x00"
        sock.sendall(b"Q" + struct.pack(">i", len(query) + 4) + query)
        rows = [body for kind, body in _pg_messages(sock) if kind == b"D"]
        sock.sendall(b"X" + struct.pack(">i", 4))
    if len(rows) != 1:
        raise ValueError(f"SELECT 1 returned {len(rows)} rows")
    return f"postgres ok: server_version {version.decode()}, SELECT 1 as {user} on {database}"


# ------------------------------------------------------------------------ S3
def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def s3_request(addr, access, secret, method, path, body=b"", region="us-east-1"):
    host, port = _split_addr(addr)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    host_hdr = f"{host}:{port}"
    headers = {"host": host_hdr, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canon_headers = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
    canon = "\n".join([method, path, "", canon_headers, signed, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canon.encode()).hexdigest()])
    k = _sign(("AWS4" + secret).encode(), day)
    k = _sign(k, region)
    k = _sign(k, "s3")
    k = _sign(k, "aws4_request")
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                                f"SignedHeaders={signed}, Signature={sig}")
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _list_buckets(addr, access, secret):
    status, data = s3_request(addr, access, secret, "GET", "/")
    if status != 200:
        raise ValueError(f"ListBuckets HTTP {status}: {data[:300]!r}")
    root = ET.fromstring(data)
    return {el.text for el in root.iter() if el.tag.endswith("}Name") or el.tag == "Name"}


def check_s3(addr, access, secret, create, require):
    names = _list_buckets(addr, access, secret)
    for b in create:
        if b not in names:
            status, data = s3_request(addr, access, secret, "PUT", "/" + b)
            if status != 200 and b"BucketAlreadyOwnedByYou" not in data:
                raise ValueError(f"CreateBucket {b} HTTP {status}: {data[:300]!r}")
    if create:
        names = _list_buckets(addr, access, secret)
    missing = [b for b in list(create) + list(require) if b not in names]
    if missing:
        raise ValueError(f"bucket(s) missing from ListBuckets: {missing}")
    for b in list(create) + list(require):
        _write_round_trip(addr, access, secret, b)
    return f"s3 ok: ListBuckets -> {sorted(names)}, a write to each read back"


def _write_round_trip(addr, access, secret, bucket):
    # A listing answers before SeaweedFS can store: the first write to a bucket grows its volumes, which took
    # longer than a client's 5 s read timeout right after a start (a first test then saw 503s). Healthy means
    # a write lands.
    key = f"/{bucket}/.hanzo-health-check"
    status, data = s3_request(addr, access, secret, "PUT", key, body=b"ok")
    if status != 200:
        raise ValueError(f"PUT {key} HTTP {status}: {data[:300]!r}")
    status, data = s3_request(addr, access, secret, "GET", key)
    if status != 200 or data != b"ok":
        raise ValueError(f"GET {key} HTTP {status}: {data[:100]!r}")
    status, data = s3_request(addr, access, secret, "DELETE", key)
    if status not in (200, 204):
        raise ValueError(f"DELETE {key} HTTP {status}: {data[:300]!r}")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    kind, addr = argv[1], argv[2]
    try:
        if kind == "kafka":
            msg = check_kafka(addr)
        elif kind == "mongo":
            msg = check_mongo(addr)
        elif kind == "postgres":
            msg = check_postgres(addr, argv[3], argv[4])
        elif kind == "s3":
            access, secret = argv[3], argv[4]
            create, require, rest = [], [], argv[5:]
            while rest:
                flag, val, rest = rest[0], rest[1], rest[2:]
                (create if flag == "--create" else require).append(val)
            msg = check_s3(addr, access, secret, create, require)
        else:
            print(f"unknown check {kind}", file=sys.stderr)
            return 2
    except (OSError, ValueError, ET.ParseError, struct.error, IndexError) as e:
        print(f"{kind} {addr} not healthy: {e}", file=sys.stderr)
        return 1
    print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
