"""Reads a pcap of QUIC traffic and reports the client's Initial packets, decrypted.

  quic_pcap.py FILE [--port 443]

Prints one JSON object: {"datagrams": [...], "client_hello_len", "client_hello_datagrams",
"sni"}. Each client datagram to PORT that holds an Initial is listed with its size, the
QUIC version, DCID and SCID lengths and the CRYPTO ranges (offset, length) of its
Initial packets (coalesced packets included); client_hello_datagrams counts the
datagrams that carry bytes of the first ClientHello (before any Retry or Version
Negotiation changes the keys, each Initial is decrypted with the keys of its own DCID).
"""

import argparse
import json
import struct
import sys

from aioquic.buffer import Buffer
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicProtocolVersion

V1 = QuicProtocolVersion.VERSION_1
V2 = QuicProtocolVersion.VERSION_2


def pcap_udp(path):
    """Yields (sport, dport, payload) of every UDP datagram in a pcap file."""
    data = open(path, "rb").read()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise SystemExit(f"{path}: not a pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    pos = 24
    while pos + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[pos + 8 : pos + 12])[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if linktype == 1:  # Ethernet
            ethertype, off = struct.unpack("!H", frame[12:14])[0], 14
            while ethertype in (0x8100, 0x88A8):
                ethertype, off = struct.unpack("!H", frame[off + 2 : off + 4])[0], off + 4
        elif linktype == 113:  # Linux cooked
            ethertype, off = struct.unpack("!H", frame[14:16])[0], 16
        elif linktype == 101:  # raw IP
            ethertype = 0x86DD if frame[0] >> 4 == 6 else 0x0800
            off = 0
        else:
            raise SystemExit(f"unsupported link type {linktype}")
        if ethertype == 0x0800:
            ihl = (frame[off] & 0x0F) * 4
            proto, l4 = frame[off + 9], off + ihl
        elif ethertype == 0x86DD:
            proto, l4 = frame[off + 6], off + 40
        else:
            continue
        if proto != 17:
            continue
        sport, dport, ulen = struct.unpack("!HHH", frame[l4 : l4 + 6])
        yield sport, dport, frame[l4 + 8 : l4 + ulen]


def is_initial(first, version):
    ptype = (first & 0x30) >> 4
    return (version == V2 and ptype == 1) or (version != V2 and ptype == 0)


def crypto_frames(payload):
    """(offset, data) of each CRYPTO frame in a decrypted Initial payload."""
    buf = Buffer(data=payload)
    out = []
    while not buf.eof():
        ftype = buf.pull_uint_var()
        if ftype == 0x00:  # PADDING
            continue
        if ftype == 0x01:  # PING
            continue
        if ftype in (0x02, 0x03):  # ACK
            buf.pull_uint_var()
            buf.pull_uint_var()
            count = buf.pull_uint_var()
            buf.pull_uint_var()
            for _ in range(count):
                buf.pull_uint_var()
                buf.pull_uint_var()
            if ftype == 0x03:
                for _ in range(3):
                    buf.pull_uint_var()
        elif ftype == 0x06:  # CRYPTO
            offset = buf.pull_uint_var()
            length = buf.pull_uint_var()
            out.append((offset, buf.pull_bytes(length)))
        elif ftype == 0x1C:  # CONNECTION_CLOSE
            buf.pull_uint_var()
            buf.pull_uint_var()
            buf.pull_bytes(buf.pull_uint_var())
        else:
            raise ValueError(f"unexpected frame type {ftype:#x} in an Initial")
    return out


def sni_of(hello):
    """The server_name of a ClientHello handshake message, or None."""
    try:
        buf = Buffer(data=hello)
        buf.pull_uint8()  # type
        buf.pull_bytes(3)  # length
        buf.pull_bytes(2 + 32)  # version, random
        buf.pull_bytes(buf.pull_uint8())  # session id
        buf.pull_bytes(buf.pull_uint16())  # cipher suites
        buf.pull_bytes(buf.pull_uint8())  # compression
        end = buf.pull_uint16() + buf.tell()
        while buf.tell() < end:
            etype, elen = buf.pull_uint16(), buf.pull_uint16()
            body = buf.pull_bytes(elen)
            if etype == 0:
                return body[5:].decode()
    except Exception:  # noqa: BLE001 - a truncated hello has no SNI to show
        return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--port", type=int, default=443)
    args = ap.parse_args()

    datagrams = []
    hello = {}
    hello_dgrams = 0
    first_dcid = None
    original_dcids = []
    for _sport, dport, payload in pcap_udp(args.file):
        if dport != args.port or not payload or not payload[0] & 0x80:
            continue
        pos, packets, carries = 0, [], False
        while pos < len(payload) and payload[pos] & 0x80:
            buf = Buffer(data=payload[pos:])
            first = buf.pull_uint8()
            version = buf.pull_uint32()
            dcid = buf.pull_bytes(buf.pull_uint8())
            scid = buf.pull_bytes(buf.pull_uint8())
            if version == 0 or not is_initial(first, version):
                break
            token = buf.pull_bytes(buf.pull_uint_var())
            length = buf.pull_uint_var()
            pn_offset = buf.tell()
            packet = payload[pos : pos + pn_offset + length]
            pos += pn_offset + length
            # Initial keys come from the client's first DCID of a connection, also once
            # it has switched to the server's CID: try this DCID, then earlier ones.
            decrypted = None
            for key_cid in [dcid, *reversed(original_dcids)]:
                crypto = CryptoPair()
                crypto.setup_initial(key_cid, is_client=False, version=version)
                try:
                    _, plain, pn = crypto.decrypt_packet(packet, pn_offset, 0)
                except Exception:  # noqa: BLE001 - the next candidate may fit
                    continue
                decrypted = (key_cid, plain, pn)
                break
            if decrypted is None:
                packets.append({"error": "cannot decrypt", "length": len(packet)})
                continue
            key_cid, plain, pn = decrypted
            if key_cid not in original_dcids:
                original_dcids.append(key_cid)
            try:
                frames = crypto_frames(plain)
            except Exception as e:  # noqa: BLE001 - reported per packet
                packets.append({"error": f"{type(e).__name__}: {e}"})
                continue
            if first_dcid is None:
                first_dcid = dcid
            if dcid == first_dcid:
                for off, chunk in frames:
                    hello[off] = chunk
                    carries = True
            packets.append(
                {
                    "packet_number": pn,
                    "length": len(packet),
                    "token_len": len(token),
                    "crypto": [[off, len(chunk)] for off, chunk in frames],
                }
            )
            info = {
                "size": len(payload),
                "version": {V1: "v1", V2: "v2"}.get(version, hex(version)),
                "dcid_len": len(dcid),
                "scid_len": len(scid),
            }
        if packets:
            datagrams.append({**info, "packets": packets})
        if carries:
            hello_dgrams += 1
    # Reassemble the contiguous prefix of the CRYPTO stream.
    stream = b""
    while len(stream) in hello:
        stream += hello[len(stream)]
    full = None
    if len(stream) >= 4:
        full = 4 + int.from_bytes(stream[1:4], "big")
    print(
        json.dumps(
            {
                "datagrams": datagrams,
                "client_hello_len": full,
                "client_hello_complete": full is not None and len(stream) >= full,
                "client_hello_datagrams": hello_dgrams,
                "sni": sni_of(stream[:full]) if full else None,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
