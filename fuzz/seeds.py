#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ (run from anywhere; idempotent).

The four captures in corpus/replay/{http-v4,http-v6,tls-curl,tls-openssl}.pcap are real
loopback traffic (tcpdump of curl and `openssl s_client`); everything else is derived
from them here or written out literally, so the seeds stay small and reviewable.
"""

import struct
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
REPLAY = CORPUS / "replay"


def read_pcap(path):
    """(link type, [(ts_sec, ts_usec, frame)]) of a little-endian microsecond pcap."""
    d = path.read_bytes()
    assert struct.unpack("<I", d[:4])[0] == 0xA1B2C3D4, path
    link = struct.unpack("<I", d[20:24])[0]
    packets, o = [], 24
    while o < len(d):
        sec, usec, caplen, _ = struct.unpack("<IIII", d[o : o + 16])
        packets.append((sec, usec, d[o + 16 : o + 16 + caplen]))
        o += 16 + caplen
    return link, packets


def pcap(packets, link, endian="<", nanos=False):
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, link)
    for sec, usec, frame in packets:
        frac = usec * 1000 if nanos else usec
        out += struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame
    return out


def pad4(b):
    return b + b"\0" * (-len(b) % 4)


def block(kind, body):
    n = 12 + len(body)
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def pcapng(packets, link, nanos=True, tsoffset=None, shift=True):
    """One section, one interface (if_tsresol 9 or the default 6, if_tsoffset seconds),
    Enhanced Packet Blocks; `shift`: stored times less the offset (same capture times)."""
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HH", 9, 1) + pad4(b"\x09") if nanos else b""
    if tsoffset is not None:
        opts += struct.pack("<HHq", 14, 8, tsoffset)
    idb = block(1, struct.pack("<HHI", link, 0, 262144) + opts + struct.pack("<HH", 0, 0))
    out = shb + idb
    for sec, usec, frame in packets:
        if tsoffset is not None and shift:
            sec -= tsoffset
        ts = sec * 10**9 + usec * 1000 if nanos else sec * 10**6 + usec
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
        out += block(6, body + pad4(frame))
    return out


def sll2(frame):
    """An Ethernet frame re-framed as Linux cooked v2 (`tcpdump -i any`)."""
    ethertype = frame[12:14]
    header = ethertype + b"\0\0" + struct.pack(">IHBB", 1, 772, 4, 6) + frame[6:12] + b"\0\0"
    return header + frame[14:]


def tcp_payloads(packets, port):
    """Client→server TCP payloads (Ethernet, IPv4) towards `port`."""
    out = []
    for _, _, f in packets:
        ip = f[14:]
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        if struct.unpack(">H", tcp[2:4])[0] != port:
            continue
        data = tcp[(tcp[12] >> 4) * 4 :]
        if data:
            out.append(data)
    return out


def records(handshake, sizes):
    """`handshake` cut into TLS records of the given payload sizes (last one: the rest)."""
    out, rest = b"", handshake
    for size in sizes + [len(handshake)]:
        part, rest = rest[:size], rest[size:]
        out += b"\x16\x03\x01" + struct.pack(">H", len(part)) + part
        if not rest:
            break
    return out


def hex_file(name):
    """Datagrams of a hex vector under nprot-user/src/datapath/parse/quic/vectors/ (one
    per paragraph)."""
    path = CORPUS.parent.parent / "nprot-user/src/datapath/parse/quic/vectors" / name
    return [bytes.fromhex("".join(p.split())) for p in path.read_text().split("\n\n")]


def datagrams(dgs):
    """The quic_initial input format: each datagram prefixed by its u16 length."""
    return b"".join(struct.pack(">H", len(d)) + d for d in dgs)


def dns_name(name):
    """A DNS name on the wire, uncompressed ("" or "." for the root)."""
    labels = [l for l in name.split(".") if l]
    return b"".join(bytes([len(l)]) + l.encode() for l in labels) + b"\0"


def dns_rr(owner, rtype, ttl, rdata, rclass=1):
    """A resource record; owner is wire bytes (a name or a compression pointer)."""
    return owner + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def dns_message(ident, flags, question, answers=(), authority=(), additional=()):
    """A DNS message: one question (name, type), then the sections' records as bytes."""
    qname, qtype = question
    return (struct.pack(">HHHHHH", ident, flags, 1, len(answers), len(authority),
                        len(additional))
            + dns_name(qname) + struct.pack(">HH", qtype, 1)
            + b"".join(answers) + b"".join(authority) + b"".join(additional))


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def main():
    _, curl = read_pcap(REPLAY / "tls-curl.pcap")
    _, openssl = read_pcap(REPLAY / "tls-openssl.pcap")
    _, http6 = read_pcap(REPLAY / "http-v6.pcap")

    # Other file formats and link types of the same traffic.
    write("replay", "tls-curl.pcapng", pcapng(curl, 1))
    write("replay", "http-v4-usec-tsoffset.pcapng",
          pcapng(read_pcap(REPLAY / "http-v4.pcap")[1], 1, nanos=False, tsoffset=1_700_000_000))
    # Issue 11: an if_tsoffset that puts the times just under u64::MAX ns (2554), where
    # "time + 1 s" overflowed.
    write("replay", "tsoffset-2554.pcapng",
          pcapng(curl, 1, tsoffset=(2**64 - 1) // 10**9 - curl[0][0], shift=False))
    write("replay", "tls-openssl-sll2-be-ns.pcap",
          pcap([(s, u, sll2(f)) for s, u, f in openssl], 276, ">", nanos=True))
    write("replay", "http-v6-raw.pcap", pcap([(s, u, f[14:]) for s, u, f in http6], 101))

    # Real ClientHellos (curl: TLS 1.3, SNI bad.example, ALPN; openssl: TLS 1.2 only,
    # SNI audit.example), and curl's split over records as a middlebox may send it.
    hello = tcp_payloads(curl, 18443)[0]
    write("tls_client_hello", "curl-tls13.bin", hello)
    write("tls_client_hello", "openssl-tls12.bin", tcp_payloads(openssl, 18443)[0])
    write("tls_client_hello", "curl-split-records.bin", records(hello[5:], [1, 4, 200]))
    # Minimal: SSL 3.0 style, no extensions, hence no SNI.
    body = b"\x03\x00" + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    write("tls_client_hello", "no-extensions.bin",
          records(b"\x01" + struct.pack(">I", len(body))[1:] + body, []))

    # QUIC client Initials: the RFC 9001 and RFC 9369 samples (one datagram each), and
    # a Chromium-like ClientHello over two datagrams (written by the unit test
    # chromium_like_vector_is_stable), in order, reversed and duplicated.
    v1 = hex_file("rfc9001-a2-client-initial.hex")
    v2 = hex_file("rfc9369-a2-client-initial.hex")
    chromium = hex_file("chromium-like-v1-2-datagrams.hex")
    write("quic_initial", "rfc9001-a2.bin", datagrams(v1))
    write("quic_initial", "rfc9369-a2.bin", datagrams(v2))
    write("quic_initial", "chromium-2-datagrams.bin", datagrams(chromium))
    write("quic_initial", "chromium-reversed-dup.bin",
          datagrams([chromium[1], chromium[1], chromium[0]]))
    write("quic_initial", "coalesced-v1-v1.bin", datagrams([v1[0] + v1[0]]))

    # DNS messages (the dns_message target): a query, responses a resolver sends, with
    # the answers' owners compressed to the question name (0xc00c).
    q = b"\xc0\x0c"
    opt = dns_rr(b"\0", 41, 0, b"", rclass=1232)
    write("dns_message", "query-a.bin", dns_message(0x1234, 0x0100, ("www.example.test", 1),
                                                    additional=[opt]))
    cdn = dns_name("cdn.example.test")
    write("dns_message", "cname-chain-a.bin", dns_message(
        0x1234, 0x8180, ("www.example.test", 1),
        [dns_rr(q, 5, 300, cdn), dns_rr(b"\xc0\x2e", 1, 600, bytes([198, 18, 5, 5]))]))
    write("dns_message", "aaaa.bin", dns_message(
        0x2345, 0x8180, ("v6.example.test", 28),
        [dns_rr(q, 28, 60, bytes.fromhex("20010db8000000000000000000000005"))], additional=[opt]))
    # HTTPS: priority 1, target ".", alpn h3,h2, ipv4hint, ech (a stub ECHConfigList).
    params = (struct.pack(">HH", 1, 6) + b"\x02h3\x02h2"
              + struct.pack(">HH", 4, 4) + bytes([198, 18, 5, 6])
              + struct.pack(">HH", 5, 6) + b"\x00\x04\xfe\x0d\x00\x00")
    write("dns_message", "https-ech.bin", dns_message(
        0x3456, 0x8180, ("svc.example.test", 65),
        [dns_rr(q, 65, 60, struct.pack(">H", 1) + b"\0" + params)]))
    soa = (dns_name("ns.example.test") + dns_name("hostmaster.example.test")
           + struct.pack(">IIIII", 1, 3600, 600, 86400, 60))
    write("dns_message", "nxdomain-soa.bin", dns_message(
        0x4567, 0x8183, ("nope.example.test", 1),
        authority=[dns_rr(b"\xc0\x11", 6, 60, soa)], additional=[opt]))
    write("dns_message", "truncated-tc.bin", dns_message(0x5678, 0x8380, ("big.example.test", 16)))

    for name, text in {
        "get.txt": "GET /hello?x=1 HTTP/1.1\r\nHost: good.example\r\nUser-Agent: curl/8.14.1\r\nAccept: */*\r\n\r\n",
        "get-http10-no-host.txt": "GET / HTTP/1.0\r\n\r\n",
        "proxy-absolute.txt": "GET http://Bad.Example:8080/a/../b//c HTTP/1.1\r\nHost: bad.example:8080\r\nProxy-Connection: keep-alive\r\n\r\n",
        "connect.txt": "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
        "post-length.txt": "POST /upload HTTP/1.1\r\nHost: good.example\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: next.example\r\n\r\n",
        "put-chunked.txt": "PUT /x HTTP/1.1\r\nhost: good.example.\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "options-star.txt": "OPTIONS * HTTP/1.1\r\nHost: good.example\r\n\r\n",
    }.items():
        write("http_request", name, text)

    write("indicators", "file.json", """{"indicators": [
  {"id": "d1", "type": "DomainName", "value": "bad.example", "action": "Block", "title": "Bad", "severity": "High", "generate_alert": true},
  {"type": "DomainName", "value": "*.wild.example", "action": "Audit", "expiration": "2099-01-01T00:00:00Z"},
  {"type": "Url", "value": "http://shop.example/checkout?x=1", "action": "Warn", "device_groups": ["grp1", "grp2"]},
  {"type": "IpAddress", "value": "198.18.0.0/15", "action": "Allowed", "description": "bench"},
  {"type": "IpAddress", "value": "2001:db8::1", "action": "Block", "process": "/usr/bin/curl"}
]}
""")
    write("indicators", "defender.csv",
          "\ufeffIndicatorType,IndicatorValue,ExpirationTime,Action,Severity,Title,Description,"
          "RecommendedActions,RbacGroups,Category,MitreTechniques,GenerateAlert\r\n"
          "DomainName,Bad.Example.COM,2099-01-01T00:00:00.0000000Z,Block,High,\"Bad, very bad\","
          "\"Line one\r\nline \"\"two\"\"\",Reimage,\"grp1, grp2;grp3\",Malware,T1566,TRUE\r\n"
          "IpAddress,198.18.0.0/15,,Audit,informational,Bench net,,,,,,false\r\n"
          "Url,http://shop.example/checkout,,allowed,,,,,,,,\r\n"
          "FileSha256,0000000000000000000000000000000000000000000000000000000000000000,,Block,,,,,,,,\r\n")
    # Issue 11: one value in two device groups, no id column (the ids derived for both
    # rows were equal, so the export did not load).
    write("indicators", "defender-groups.csv",
          "IndicatorType,IndicatorValue,Action,RbacGroups\nDomainName,a.example,Block,grp1\n"
          "DomainName,a.example,Block,grp2\n")
    write("indicators", "defender-ids.csv",
          "action,indicatorvalue,INDICATORTYPE,IndicatorId\nWarn,example.org,domainname,feed-17\n"
          "Alert,example.net,DomainName,\n")
    write("indicators", "hosts.txt",
          "# hosts-style\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
          "0.0.0.0 ads.example tracker.example # two\nfe80::1%lo0 x.example\n")
    write("indicators", "list.txt",
          "\ufeff# blocklist\r\nexample.com\r\n*.Wild.Example   # comment\r\n203.0.113.7\r\n"
          "2001:db8::/32\r\nhttps://secure.example/login\r\nhttp://plain.example/path?q\r\n")

    write("config", "packaged.toml",
          (CORPUS.parent.parent / "packaging" / "nprot.toml").read_text())
    write("config", "minimal.toml", 'interfaces = ["eth0"]\n')
    write("config", "full.toml", """mode = "block"
interfaces = ["eth0", "wg0"]
state_dir = "state"
device_groups = ["grp1"]
indicators = ["a.json", { path = "allow.txt", action = "Allowed" }]
list_action = "Warn"
verdict_timeout_ms = 60000
rt_priority = 0
proxies = ["198.18.1.1:3128", "[2001:db8::1]:8080", "198.18.1.2"]
process_cgroup = "off"
process_cache = 16

[events]
stdout = true
file = "events.jsonl"
file_max_bytes = 0
file_keep = 1

[[events.collector]]
address = "198.18.0.9:514"
protocol = "udp"
buffer_events = 10000
""")


if __name__ == "__main__":
    main()
