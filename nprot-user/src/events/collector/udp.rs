//! The UDP sender: one datagram per line, nothing resent.

use std::{
    io,
    net::{SocketAddr, ToSocketAddrs, UdpSocket},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{
    Backoff, CollectorConfig, IDLE_CHECK,
    queue::{Chunk, Shared, Waited, take_lines, wait_lines},
};

/// The UDP sender: one datagram per line, nothing resent.
pub(super) fn run_udp(config: &CollectorConfig, shared: &Shared) {
    let mut socket: Option<UdpSocket> = None;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut chunk = Chunk::default();
    loop {
        match wait_lines(shared, IDLE_CHECK) {
            Waited::Done => break,
            Waited::Idle => continue,
            Waited::Lines => {}
        }
        if socket.is_none() {
            match udp_socket(&config.address) {
                Ok(s) => {
                    shared.stats.connected.store(true, Ordering::Relaxed);
                    backoff.reset();
                    socket = Some(s);
                }
                Err(e) => {
                    if shared.closing().is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    log::warn!("udp collector {}: {e}", config.address);
                    shared.sleep(backoff.next());
                    continue;
                }
            }
        }
        let Some(sock) = socket.as_ref() else {
            continue;
        };
        take_lines(shared, &mut chunk, 64 * 1024);
        let (mut sent, mut failed) = (0, 0);
        let mut start = 0;
        for &end in &chunk.ends {
            let line = &chunk.buf[start..end];
            start = end;
            // A pending ICMP error (port unreachable) fails one send: try once more.
            let ok = match sock.send(line) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => sock.send(line),
                other => other,
            }
            .is_ok();
            if ok { sent += 1 } else { failed += 1 }
        }
        chunk.clear();
        shared.delivered(sent);
        shared.dropped(failed);
    }
    let n = chunk.lines();
    shared.dropped(n);
    shared.stats.connected.store(false, Ordering::Relaxed);
}

fn udp_socket(address: &str) -> io::Result<UdpSocket> {
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing"))?;
    let local: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, time::Duration};

    use crate::events::{
        collector::{
            CollectorConfig, CollectorSink, Transport, UDP_MAX_LINE,
            testutil::{line, wait_for},
        },
        sink::Sink,
    };

    #[test]
    fn udp_sends_one_datagram_per_line() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = collector.local_addr().unwrap().to_string();
        let mut sink = CollectorSink::start(CollectorConfig::new(Transport::Udp, &addr)).unwrap();
        let long = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(UDP_MAX_LINE));
        let batch = format!("{}{}{long}{{\"n\":3}}", line(1), line(2));
        sink.write_batch(batch.as_bytes()).unwrap();
        let mut buf = vec![0u8; 70_000];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = collector.recv(&mut buf).unwrap();
            got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        assert_eq!(got, [line(1), line(2), line(3)]);
        wait_for("counters", || sink.counters().sent == 3);
        assert_eq!(sink.dropped(), 1, "the oversized line");
        // A datagram of exactly the limit still goes.
        let max = format!("{}\n", "y".repeat(UDP_MAX_LINE - 1));
        sink.write_batch(max.as_bytes()).unwrap();
        assert_eq!(collector.recv(&mut buf).unwrap(), UDP_MAX_LINE);
        let c = sink.close(Duration::from_secs(1));
        assert_eq!((c.sent, c.dropped, c.queued), (4, 1, 0));
    }
}
