"""nprot_frames: hand-built TCP conversations for nprot's evasion and encapsulation tests.

Frames are built with scapy and sent with AF_PACKET sockets, so that nothing of the
sending host's TCP stack is involved. What arrives is read twice on each interface:

- `wire`: an ETH_P_ALL socket, which sees ingress frames *before* tc (the sensor's TCX
  programs) and egress frames after it: what the wire carried;
- `stack`: sockets bound to one ethertype each, which see ingress frames *after* tc:
  what the host's stack is handed, i.e. what the sensor let through (a held packet, a
  packet turned into a reset).

Every read is bounded in time. Results are plain dicts for `json.dumps`.
"""

import ctypes
import fcntl
import os
import random
import select
import socket
import struct
import time

from scapy.all import (  # noqa: F401 (re-exported for the scripts)
    GRE,
    IP,
    PPP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PPPoE,
    Raw,
)
from scapy.layers.inet import IPOption_NOP, IPOption_Router_Alert, fragment  # noqa: F401
from scapy.layers.inet6 import fragment6  # noqa: F401
from scapy.layers.vxlan import VXLAN  # noqa: F401
from scapy.contrib.geneve import GENEVE  # noqa: F401

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
# Ethertypes a frame can reach the stack with after the kernel took off an outer VLAN tag.
STACK_PROTOS = (0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x8864)
CLONE_NEWNET = 0x40000000
SIOCGIFHWADDR = 0x8927
SO_RCVBUFFORCE = 33

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns(%s): %s" % (path, os.strerror(err)))
    finally:
        os.close(fd)


def in_netns(name, fn):
    """Runs fn() with this thread in the network namespace `name`, then comes back.
    Sockets made by fn() stay in that namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns("/run/netns/" + name)
        return fn()
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "cannot return to the home namespace")
        os.close(home)


def mac_of(iface):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        info = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", iface.encode()[:15]))
    finally:
        s.close()
    return ":".join("%02x" % b for b in info[18:24])


class Port:
    """AF_PACKET access to one interface of the namespace this is made in."""

    def __init__(self, iface):
        self.iface = iface
        self.mac = mac_of(iface)
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.bind((iface, 0))
        self.wire = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.wire.bind((iface, ETH_P_ALL))
        self.stack = []
        for proto in STACK_PROTOS:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
            s.bind((iface, proto))
            self.stack.append(s)
        # A packet the sensor holds comes by again and again (it is requeued until its
        # verdict): room for thousands, so that nothing after it is lost.
        for s in [self.wire] + self.stack:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        self.seen = {"wire": [], "stack": [], "out": []}

    def send(self, frame):
        self.tx.send(bytes(frame))

    def poll(self, timeout):
        """Reads what arrives for `timeout` seconds (at least one pass) into `seen`."""
        deadline = time.monotonic() + timeout
        socks = [self.wire] + self.stack
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select(socks, [], [], max(left, 0))
            for s in ready:
                data, addr = s.recvfrom(65535)
                if s is self.wire:
                    self.seen["out" if addr[2] == PACKET_OUTGOING else "wire"].append(data)
                else:
                    self.seen["stack"].append(data)
            if not ready and left <= 0:
                return

    def segments(self, where, match):
        """The TCP segments in frames seen `where` for which match(segment) is true:
        "wire" (arriving, before tc), "stack" (arriving, after tc) or "out" (leaving,
        after tc)."""
        out = []
        for frame in self.seen[where]:
            seg = inner_tcp(frame)
            if seg is not None and match(seg):
                out.append(seg)
        return out


def _u16(b, at):
    return struct.unpack_from("!H", b, at)[0]


def inner_tcp(frame):
    """Walks an Ethernet frame to the TCP segment it carries, through VLAN tags, a PPPoE
    session, IPv4 options, IPv6 extension headers, GRE, VXLAN and GENEVE. Returns a dict
    (addresses, ports, seq, ack, flags, payload, tunneled) or None."""
    try:
        return _inner_tcp(frame)
    except (IndexError, struct.error):
        return None


def _inner_tcp(frame):
    et = _u16(frame, 12)
    off = 14
    tunneled = False
    ihl, ext = 0, []
    for depth in range(3):
        for _ in range(4):
            if et not in (0x8100, 0x88A8, 0x9100):
                break
            et = _u16(frame, off + 2)
            off += 4
        if et == 0x8864:
            et = {0x0021: 0x0800, 0x0057: 0x86DD}.get(_u16(frame, off + 6))
            off += 8
        if et == 0x0800:
            ihl = (frame[off] & 0x0F) * 4
            ext = []
            proto = frame[off + 9]
            src = socket.inet_ntop(socket.AF_INET, frame[off + 12 : off + 16])
            dst = socket.inet_ntop(socket.AF_INET, frame[off + 16 : off + 20])
            end = off + _u16(frame, off + 2)
            l4 = off + ihl
        elif et == 0x86DD:
            ihl = 0
            src = socket.inet_ntop(socket.AF_INET6, frame[off + 8 : off + 24])
            dst = socket.inet_ntop(socket.AF_INET6, frame[off + 24 : off + 40])
            end = off + 40 + _u16(frame, off + 4)
            nxt = frame[off + 6]
            l4 = off + 40
            ext = []
            for _ in range(8):
                if nxt in (0, 43, 60):
                    length = (frame[l4 + 1] + 1) * 8
                elif nxt == 44:
                    length = 8
                elif nxt == 51:
                    length = (frame[l4 + 1] + 2) * 4
                else:
                    break
                ext.append(nxt)
                nxt = frame[l4]
                l4 += length
            proto = nxt
        else:
            return None
        if proto == 6:
            sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", frame, l4)
            data = bytes(frame[l4 + (doff >> 4) * 4 : end])
            return {
                "src": src,
                "dst": dst,
                "sport": sport,
                "dport": dport,
                "seq": seq,
                "ack": ack,
                "flags": flags,
                "rst": bool(flags & 0x04),
                "syn": bool(flags & 0x02),
                "fin": bool(flags & 0x01),
                "payload": data,
                "tunneled": tunneled,
                # IPv4 header length, IPv6 extension headers walked (innermost IP).
                "ihl": ihl,
                "ext": ext,
            }
        if depth == 2:
            return None
        if proto == 47:
            gflags = _u16(frame, l4)
            length = 4 + 4 * sum(1 for bit in (0x8000, 0x2000, 0x1000) if gflags & bit)
            ptype = _u16(frame, l4 + 2)
            inner = l4 + length
        elif proto == 17 and _u16(frame, l4 + 2) == 4789:
            ptype, inner = 0x6558, l4 + 16
        elif proto == 17 and _u16(frame, l4 + 2) == 6081:
            ptype = _u16(frame, l4 + 10)
            inner = l4 + 16 + (frame[l4 + 8] & 0x3F) * 4
        else:
            return None
        tunneled = True
        if ptype == 0x6558:
            et, off = _u16(frame, inner + 12), inner + 14
        else:
            et, off = ptype, inner
    return None


def summary(segments):
    """What a list of segments from one side amounts to."""
    data = b"".join(s["payload"] for s in segments if not s["rst"])
    return {
        "segments": len(segments),
        "data_bytes": len(data),
        "first": data[:40].decode("latin-1"),
        "rst": sum(1 for s in segments if s["rst"]),
        "rst_payload_bytes": sum(len(s["payload"]) for s in segments if s["rst"]),
        "fin": any(s["fin"] for s in segments),
        "flags": [s["flags"] for s in segments],
    }


def l3(src, dst, **kw):
    """An IPv4 or IPv6 header for the addresses."""
    if ":" in dst:
        return IPv6(src=src, dst=dst, **kw)
    return IP(src=src, dst=dst, **kw)


def headers_for(kind, src, dst):
    """A builder of the network header(s) of every packet of a scripted client:
    "plain"; "ipv4-options" (Router Alert and NOPs, a 28-byte header); "ipv6-hbh-dst"
    (hop-by-hop and destination options before TCP); "ipv6-hbh-dst-frag" (the same and
    an atomic fragment header: offset 0, no more fragments)."""
    if kind == "plain":
        return lambda: l3(src, dst)
    if kind == "ipv4-options":
        opts = [IPOption_Router_Alert(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()]
        return lambda: IP(src=src, dst=dst, options=opts)
    if kind == "ipv6-hbh-dst":
        return lambda: IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    if kind == "ipv6-hbh-dst-rt":
        # A type 0 routing header with no segment left: the receiver skips it.
        return lambda: (
            IPv6(src=src, dst=dst)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[])
        )
    if kind.startswith("ipv6-dst*"):
        # Hop-by-hop, then N destination-options headers.
        count = int(kind[len("ipv6-dst*"):])

        def many():
            p = IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop()
            for _ in range(count):
                p = p / IPv6ExtHdrDestOpt()
            return p

        return many
    if kind == "ipv6-hbh-dst-frag":
        return lambda: (
            IPv6(src=src, dst=dst)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrFragment(offset=0, m=0, id=random.randrange(1 << 32))
        )
    raise ValueError("unknown header kind " + kind)


class TcpClient:
    """A TCP client built from frames, talking to a real server: the host's own stack
    must not answer the server (see `nprot_tests::frames::drop_kernel_resets`).

    `ip()` builds the network header of every packet; override `headers` to add IPv4
    options or IPv6 extension headers."""

    def __init__(self, port, peer_mac, src, dst, dport, sport=None, headers=None):
        self.port = port
        self.peer_mac = peer_mac
        self.src, self.dst, self.dport = src, dst, dport
        # Below the ephemeral range: no socket of the host's own (one in TIME_WAIT from a
        # readiness probe, say) can hold the port and answer for it.
        self.sport = sport or random.randint(20000, 32000)
        self.isn = random.randrange(1 << 32)
        self.rcv = 0
        self.headers = headers or (lambda: l3(self.src, self.dst))

    def frame(self, flags, data=b"", off=0, seq=None, ack=None, **tcp):
        if seq is None:
            seq = (self.isn + 1 + off) % (1 << 32)
        t = TCP(
            sport=self.sport,
            dport=self.dport,
            flags=flags,
            seq=seq,
            ack=self.rcv if ack is None else ack,
            window=65535,
            **tcp
        )
        p = Ether(src=self.port.mac, dst=self.peer_mac) / self.headers() / t
        if data:
            p = p / Raw(data)
        return p

    def send(self, flags, data=b"", off=0, **kw):
        self.port.send(self.frame(flags, data, off, **kw))

    def send_fragmented(self, flags, data, off, size):
        """Sends the segment as IP fragments that carry at most `size` bytes (a multiple
        of 8) of it each: the first one the TCP header and the first bytes of data."""
        p = self.frame(flags, data, off)
        ip = p.payload
        if isinstance(ip, IPv6):
            # The unfragmentable part is the IPv6 header (40 bytes) and the fragment
            # header (8).
            ip = IPv6(bytes(IPv6(src=self.src, dst=self.dst) / IPv6ExtHdrFragment(id=random.randrange(1 << 32)) / ip.payload))
            parts = fragment6(ip, 48 + size)
        else:
            parts = fragment(IP(bytes(ip)), fragsize=size)
        for part in parts:
            self.port.send(Ether(src=self.port.mac, dst=self.peer_mac) / part)

    def from_server(self, seg):
        return seg["sport"] == self.dport and seg["dport"] == self.sport and seg["src"] == self.dst

    def connect(self, timeout=3.0):
        self.port.send(self.frame("S", seq=self.isn, options=[("MSS", 1400)]))
        deadline = time.monotonic() + timeout
        want = (self.isn + 1) % (1 << 32)
        while time.monotonic() < deadline:
            self.port.poll(0.05)
            for seg in self.port.segments("stack", self.from_server):
                if seg["syn"] and seg["flags"] & 0x10 and seg["ack"] == want:
                    self.rcv = (seg["seq"] + 1) % (1 << 32)
                    self.send("A")
                    return
        raise RuntimeError("no SYN-ACK from %s:%d" % (self.dst, self.dport))

    def result(self):
        """What came from the server, on the wire and into the stack."""
        return {
            "sport": self.sport,
            "wire": summary(self.port.segments("wire", self.from_server)),
            "stack": summary(self.port.segments("stack", self.from_server)),
        }

    def await_answer(self, timeout):
        """Polls until the stack got a reset or data from the server, or `timeout`; then
        a little longer, for what follows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.port.poll(0.05)
            got = self.port.segments("stack", self.from_server)
            if any(s["rst"] or s["payload"] for s in got):
                self.port.poll(0.3)
                break
        return self.result()


# ---- Scripted conversations on both veth ends (encapsulations) -------------------------


class Wrap:
    """How the packets of a scripted flow are carried. `frame(inner, from_client)` wraps
    an inner IP packet (a scapy layer) for the wire."""

    def __init__(self, kind, client_port, server_port, underlay):
        self.kind = kind
        self.cmac, self.smac = client_port.mac, server_port.mac
        self.uc, self.us = underlay
        self.vxlan_sport = random.randint(49152, 65000)

    def frame(self, inner, from_client):
        src, dst = (self.cmac, self.smac) if from_client else (self.smac, self.cmac)
        usrc, udst = (self.uc, self.us) if from_client else (self.us, self.uc)
        eth = Ether(src=src, dst=dst)
        inner_eth = Ether(
            src="02:00:00:00:00:0%d" % (1 if from_client else 2),
            dst="02:00:00:00:00:0%d" % (2 if from_client else 1),
        )
        k = self.kind
        if k == "plain":
            return eth / inner
        if k == "dot1q":
            return eth / Dot1Q(vlan=100) / inner
        if k == "qinq":
            return eth / Dot1AD(vlan=200) / Dot1Q(vlan=100) / inner
        if k == "qinq9100":
            return Ether(src=src, dst=dst, type=0x9100) / Dot1Q(vlan=300) / inner
        if k == "pppoe":
            # The PPP protocol in full (two bytes): scapy's PPP layer would compress it to
            # one, which RFC 2516 advises against.
            proto = b"\x00\x57" if isinstance(inner, IPv6) else b"\x00\x21"
            return eth / PPPoE(sessionid=0x1234) / Raw(proto) / inner
        outer = IP(src=usrc, dst=udst)
        if k == "gre":
            return eth / outer / GRE() / inner
        if k == "gre-key":
            return eth / outer / GRE(key_present=1, key=0x2A) / inner
        if k == "gre-csum-key-seq":
            g = GRE(chksum_present=1, key_present=1, key=7, seqnum_present=1, sequence_number=5)
            return eth / outer / g / inner
        if k == "gre-eth":
            return eth / outer / GRE(proto=0x6558) / inner_eth / inner
        if k == "vxlan":
            return eth / outer / UDP(sport=self.vxlan_sport, dport=4789) / VXLAN(vni=42) / inner_eth / inner
        if k == "geneve":
            proto = 0x86DD if isinstance(inner, IPv6) else 0x0800
            # One 8-byte option (class 0x0102, type 0x80, 4 bytes of data).
            opt = struct.pack("!HBB", 0x0102, 0x80, 1) + b"\x00\x00\x00\x01"
            g = GENEVE(vni=7, proto=proto, optionlen=2) / Raw(opt)
            return eth / outer / UDP(sport=self.vxlan_sport, dport=6081) / g / inner
        if k == "geneve-eth":
            g = GENEVE(vni=8, proto=0x6558)
            return eth / outer / UDP(sport=self.vxlan_sport, dport=6081) / g / inner_eth / inner
        raise ValueError("unknown encapsulation " + k)


def scripted_flow(client, server, wrap, caddr, saddr, cport, request, response, wait=0.2):
    """One TCP conversation, both sides scripted: SYN from the client (sent on `client`),
    SYN-ACK from the server (sent on `server`), ACK, the request, then — `wait` seconds
    later, once the sensor had time to decide — the server's response (sent again if
    nothing reached the client's stack), and a last ACK from the client. Returns what the
    client's stack and the server's wire got."""
    cisn, sisn = random.randrange(1 << 32), random.randrange(1 << 32)
    m32 = 1 << 32

    def pkt(from_client, flags, seq, ack, data=b""):
        if from_client:
            ip = l3(caddr, saddr) / TCP(sport=cport, dport=80, flags=flags, seq=seq, ack=ack, window=65535)
        else:
            ip = l3(saddr, caddr) / TCP(sport=80, dport=cport, flags=flags, seq=seq, ack=ack, window=65535)
        if data:
            ip = ip / Raw(data)
        return wrap.frame(ip, from_client)

    def c2s(seg):
        return seg["sport"] == cport and seg["dport"] == 80

    def s2c(seg):
        return seg["sport"] == 80 and seg["dport"] == cport

    def answered():
        return [g for g in client.segments("stack", s2c) if g["payload"] or g["rst"]]

    gap = 0.02
    client.send(pkt(True, "S", cisn, 0))
    time.sleep(gap)
    server.send(pkt(False, "SA", sisn, (cisn + 1) % m32))
    time.sleep(gap)
    client.send(pkt(True, "A", (cisn + 1) % m32, (sisn + 1) % m32))
    time.sleep(gap)
    client.send(pkt(True, "PA", (cisn + 1) % m32, (sisn + 1) % m32, request))
    time.sleep(wait)
    resp = pkt(False, "PA", (sisn + 1) % m32, (cisn + 1 + len(request)) % m32, response)
    sends = 0
    for _ in range(3):
        server.send(resp)
        sends += 1
        # A response the sensor holds (no verdict yet) is dropped after a while: the
        # server sends it again, as a real one would.
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline and not answered():
            client.poll(0.05)
        if answered():
            break
    client.send(pkt(True, "A", (cisn + 1 + len(request)) % m32, (sisn + 1 + len(response)) % m32))
    client.poll(0.1)
    server.poll(0.15)
    return {
        "cport": cport,
        "response_sends": sends,
        # What the client's stack was handed from the server (after the sensor).
        "client_stack": summary(client.segments("stack", s2c)),
        # What the client's wire carried from the server (before the sensor).
        "client_wire": summary(client.segments("wire", s2c)),
        # What reached the server from the client (after the sensor).
        "server_wire": summary(server.segments("wire", c2s)),
    }
