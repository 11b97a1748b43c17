#!/usr/bin/env python3
"""A real OTLP/HTTP receiver for tests: decodes the protobuf export requests with the
official `opentelemetry-proto` package and appends what it got, one JSON object per log
record, span and request, to a file, fsynced before it answers 200 (so an answered
record is on disk even if the receiver is killed right after).

    otlp_receiver.py --port PORT --out FILE [--control FILE] [--prefix /BASE] [--tls DIR]

The control file, read on every request, changes the answer: `503 2` answers 503 with
`Retry-After: 2` (any status and an optional Retry-After; a 3xx names the same path as its
Location); `partial 3` accepts the batch but reports 3 records rejected (partial success).
No control file, or an empty one: 200. Refusals are logged as {"signal": "refused", ...}
lines. With --tls DIR it serves https, with a certificate for 127.0.0.1 issued by a CA of
its own (DIR/ca.pem, made on first use with the `cryptography` package).
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(v):
    """An AnyValue as a plain Python value."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def decode_logs(body):
    req = ExportLogsServiceRequest()
    req.ParseFromString(body)
    out = []
    for rl in req.resource_logs:
        resource = attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                a = attrs(r.attributes)
                out.append({
                    "signal": "log",
                    "seq": a.get("mcp_guard.seq"),
                    "time_unix_nano": r.time_unix_nano,
                    "severity_number": r.severity_number,
                    "severity_text": r.severity_text,
                    "event_name": r.event_name,
                    "body": value(r.body),
                    "attributes": a,
                    "trace_id": r.trace_id.hex(),
                    "span_id": r.span_id.hex(),
                    "scope": sl.scope.name,
                    "resource": resource,
                })
    return out, ExportLogsServiceResponse


def decode_traces(body):
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "signal": "span",
                    "name": s.name,
                    "kind": s.kind,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "status": MessageToDict(s.status),
                    "attributes": attrs(s.attributes),
                    "scope": ss.scope.name,
                    "resource": resource,
                })
    return out, ExportTraceServiceResponse


ROUTES = {"/v1/logs": decode_logs, "/v1/traces": decode_traces}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, status, body=b"", ctype="application/x-protobuf", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path = self.path
        if path.startswith(self.server.prefix):
            path = path[len(self.server.prefix):]
        decode = ROUTES.get(path)
        if decode is None:
            return self.answer(404, b"no such path", "text/plain")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.answer(415, b"expected application/x-protobuf", "text/plain")
        control = ""
        if self.server.control and os.path.exists(self.server.control):
            with open(self.server.control) as f:
                control = f.read().strip()
        words = control.split()
        if words and words[0] != "partial":
            status = int(words[0])
            headers = [("Retry-After", words[1])] if len(words) > 1 else []
            if 300 <= status < 400:
                headers.append(("Location", self.path))
            self.write([{"signal": "refused", "path": path, "status": status}])
            return self.answer(status, b"told to refuse: " + control.encode(), "text/plain", headers)
        try:
            items, response = decode(body)
        except Exception as e:  # a malformed request is the sender's fault: 400
            return self.answer(400, f"cannot decode: {e}".encode(), "text/plain")
        meta = {
            "signal": "request",
            "path": path,
            "items": len(items),
            "authorization": self.headers.get("Authorization"),
        }
        self.write([meta] + items)
        resp = response()
        if words and words[0] == "partial":
            n = int(words[1])
            if path == "/v1/logs":
                resp.partial_success.rejected_log_records = n
            else:
                resp.partial_success.rejected_spans = n
            resp.partial_success.error_message = "told to reject some"
        self.answer(200, resp.SerializeToString())

    def write(self, items):
        with open(self.server.out, "a") as f:
            for item in items:
                f.write(json.dumps(item, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def make_tls(d):
    """A CA (d/ca.pem) and a certificate for 127.0.0.1 it issued (d/server.pem, .key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(d, exist_ok=True)
    if os.path.exists(os.path.join(d, "server.pem")):
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("otlp-receiver test CA")).issuer_name(name("otlp-receiver test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - day).not_valid_after(now + day)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - day).not_valid_after(now + day)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    with open(os.path.join(d, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(os.path.join(d, "server.key"), "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(os.path.join(d, "server.pem"), "wb") as f:
        f.write(cert.public_bytes(pem))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--control")
    p.add_argument("--prefix", default="", help="a base path the routes are under")
    p.add_argument("--tls", help="serve https with a CA and certificate kept in this directory")
    a = p.parse_args()
    server = HTTPServer(("127.0.0.1", a.port), Handler)
    if a.tls:
        import ssl
        make_tls(a.tls)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(a.tls, "server.pem"), os.path.join(a.tls, "server.key"))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.out, server.control, server.prefix = a.out, a.control, a.prefix.rstrip("/")
    # A receiver killed mid-write left a line unfinished: the next writes start on their own.
    if os.path.exists(a.out) and os.path.getsize(a.out) > 0:
        with open(a.out, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
