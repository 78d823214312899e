"""HTTP/3 test server (aioquic) for the nprot QUIC end-to-end tests.

Listens on UDP PORT of every --listen address (IPv4 and IPv6), with one certificate
(--cert/--key, its SANs cover every served name). Every request is answered with a small
HTML page carrying the marker <p id="proto">h3 NAME</p> (NAME: the request's authority
without port) and logged as one JSON line {authority, path, method, version} to --log.
Prints "ready" on stdout once every socket is bound.

--retry: answer each first Initial with a Retry (address validation).
--quic-version v1|v2|both: the versions accepted (others get Version Negotiation).
"""

import argparse
import asyncio
import json
import sys

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent
from aioquic.quic.packet import QuicProtocolVersion

VERSIONS = {
    "v1": [QuicProtocolVersion.VERSION_1],
    "v2": [QuicProtocolVersion.VERSION_2],
    "both": [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2],
}
VERSION_NAMES = {
    QuicProtocolVersion.VERSION_1: "v1",
    QuicProtocolVersion.VERSION_2: "v2",
}


def page(name: str, path: str) -> bytes:
    return (
        "<!DOCTYPE html><html><head><title>nprot h3</title></head><body>"
        f'<p id="proto">h3 {name}</p><p id="path">{path}</p></body></html>\n'
    ).encode()


class Http3Server(QuicConnectionProtocol):
    log = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic)
        if self._http is None:
            return
        for ev in self._http.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.request(ev)
            elif isinstance(ev, DataReceived):
                pass

    def request(self, ev: HeadersReceived) -> None:
        headers = {k.decode(): v.decode() for k, v in ev.headers}
        authority = headers.get(":authority", "")
        path = headers.get(":path", "")
        record = {
            "authority": authority,
            "path": path,
            "method": headers.get(":method", ""),
            "version": VERSION_NAMES.get(self._quic._version, str(self._quic._version)),
            "user_agent": headers.get("user-agent", ""),
        }
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        name = authority.rsplit(":", 1)[0] if not authority.startswith("[") else authority
        if path.split("?")[0] in ("/", "/index.html"):
            status, body = b"200", page(name, path)
        else:
            status, body = b"404", b"not found\n"
        self._http.send_headers(
            ev.stream_id,
            [
                (b":status", status),
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        )
        self._http.send_data(ev.stream_id, body, end_stream=True)
        self.transmit()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", required=True, help="address (repeat)")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--retry", action="store_true")
    ap.add_argument("--quic-version", choices=sorted(VERSIONS), default="both")
    args = ap.parse_args()

    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=H3_ALPN,
        supported_versions=VERSIONS[args.quic_version],
        max_datagram_frame_size=65536,
    )
    config.load_cert_chain(args.cert, args.key)
    Http3Server.log = open(args.log, "a", encoding="utf-8")
    for addr in args.listen:
        await serve(
            addr,
            args.port,
            configuration=config,
            create_protocol=Http3Server,
            retry=args.retry,
        )
    print("ready", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
