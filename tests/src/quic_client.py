"""HTTP/3 test client (aioquic) for the nprot QUIC end-to-end tests.

  quic_client.py ADDR PORT NAME [--ca FILE | --insecure] [--quic-version v1|v2]
                 [--path /] [--timeout S]
      GET https://NAME/PATH from ADDR:PORT (SNI and :authority NAME); prints one JSON line
      {"status", "body_len", "body", "version"} and exits 0, or {"error"} and exits
      2 when nothing answered within the timeout, 1 on any other failure.

  quic_client.py ... --count N [--handshake-only]
      N connections one after the other (each a GET unless --handshake-only); prints
      {"count", "ok", "failed", "elapsed"} and exits 0 if every one succeeded, else 1.
"""

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import sys
import time

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from aioquic.quic.packet import QuicProtocolVersion

VERSIONS = {"v1": QuicProtocolVersion.VERSION_1, "v2": QuicProtocolVersion.VERSION_2}
EXIT_TIMEOUT = 2


class Http3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._waiters = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for ev in self._http.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                entry = self._waiters.get(ev.stream_id)
                if entry is None:
                    continue
                fut, reply = entry
                if isinstance(ev, HeadersReceived):
                    reply["headers"].extend(ev.headers)
                else:
                    reply["body"] += ev.data
                if ev.stream_ended and not fut.done():
                    fut.set_result(reply)

    async def get(self, name: str, path: str) -> dict:
        stream_id = self._quic.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = (fut, {"headers": [], "body": b""})
        self._http.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", name.encode()),
                (b":path", path.encode()),
                (b"user-agent", b"nprot-tests-aioquic"),
            ],
            end_stream=True,
        )
        self.transmit()
        return await fut


def configuration(args) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.server_name = args.name
    if args.quic_version:
        config.supported_versions = [VERSIONS[args.quic_version]]
    if args.ca:
        config.load_verify_locations(args.ca)
    else:
        config.verify_mode = ssl.CERT_NONE
    return config


@contextlib.asynccontextmanager
async def connect_fast(addr: str, port: int, *, configuration, create_protocol):
    """aioquic's connect() without waiting out the closing period on the way out (the
    CONNECTION_CLOSE is still sent): for the bench, where that wait is most of the time."""
    loop = asyncio.get_running_loop()
    info = (await loop.getaddrinfo(addr, port, type=socket.SOCK_DGRAM))[0]
    sock = socket.socket(info[0], socket.SOCK_DGRAM)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: create_protocol(QuicConnection(configuration=configuration)), sock=sock
    )
    try:
        protocol.connect(info[4])
        await protocol.wait_connected()
        yield protocol
    finally:
        protocol.close()
        transport.close()


async def one(args, request: bool, fast: bool = False) -> dict:
    opener = connect_fast if fast else connect
    async with opener(
        args.addr, args.port, configuration=configuration(args), create_protocol=Http3Client
    ) as client:
        version = client._quic._version
        if not request:
            return {"version": "v2" if version == VERSIONS["v2"] else "v1"}
        reply = await client.get(args.name, args.path)
        status = dict(reply["headers"]).get(b":status", b"").decode()
        body = reply["body"].decode(errors="replace")
        return {
            "status": int(status) if status.isdigit() else None,
            "body_len": len(reply["body"]),
            "body": body,
            "version": "v2" if version == VERSIONS["v2"] else "v1",
        }


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("port", type=int)
    ap.add_argument("name")
    ap.add_argument("--ca")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--quic-version", choices=sorted(VERSIONS))
    ap.add_argument("--path", default="/")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--count", type=int)
    ap.add_argument("--handshake-only", action="store_true")
    args = ap.parse_args()
    if not args.ca and not args.insecure:
        ap.error("give --ca FILE or --insecure")

    if args.count is None:
        try:
            out = await asyncio.wait_for(one(args, True), args.timeout)
        except (asyncio.TimeoutError, ConnectionError) as e:
            print(json.dumps({"error": f"timeout: {type(e).__name__} {e}"}), flush=True)
            return EXIT_TIMEOUT
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
            return 1
        print(json.dumps(out), flush=True)
        return 0

    ok = failed = 0
    errors = []
    start = time.monotonic()
    for _ in range(args.count):
        try:
            await asyncio.wait_for(one(args, not args.handshake_only, True), args.timeout)
            ok += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            failed += 1
            if len(errors) < 5:
                errors.append(f"{type(e).__name__}: {e}")
    elapsed = time.monotonic() - start
    print(
        json.dumps(
            {"count": args.count, "ok": ok, "failed": failed, "elapsed": elapsed, "errors": errors}
        ),
        flush=True,
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
