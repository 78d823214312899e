//! What every test world ([`Env`](crate::Env), [`GatewayEnv`](crate::GatewayEnv)) offers
//! its tests: clients in the client namespace against servers in the server namespace.

use std::{net::IpAddr, time::Duration};

use anyhow::Result;

use crate::{
    bulk::BulkServer,
    clients::{self, CurlRun, Exchange},
};

/// A client namespace and a server namespace, however they are connected.
pub trait ClientServer {
    /// Where the clients run.
    fn client_ns(&self) -> &str;
    /// Where the servers run.
    fn server_ns(&self) -> &str;
    /// The server's address of the given family.
    fn server_ip(&self, v6: bool) -> IpAddr;

    /// `curl -k https://NAME:PORT/PATH` from the client, resolved to the server's address
    /// of the family; whatever happened, a reset included (see [`clients::curl_any`]).
    fn curl_https_any(&self, name: &str, port: u16, v6: bool, path: &str) -> Result<CurlRun> {
        let url = format!("https://{name}:{port}{path}");
        clients::curl_any_in(self.client_ns(), name, port, self.server_ip(v6), &url, &[])
    }

    /// `curl http://NAME[:PORT]/PATH` (port omitted when 80) with extra curl arguments;
    /// whatever happened.
    fn curl_http_any(
        &self,
        name: &str,
        port: u16,
        v6: bool,
        path: &str,
        extra: &[&str],
    ) -> Result<CurlRun> {
        let url = clients::http_url(name, port, path);
        clients::curl_any_in(
            self.client_ns(),
            name,
            port,
            self.server_ip(v6),
            &url,
            extra,
        )
    }

    /// Raw TCP to the server: send `chunks` (`pause` apart), then read everything until
    /// end of stream, a reset, a read waiting longer than `read_timeout`, or `limit`
    /// bytes; see [`clients::exchange_in`].
    fn exchange(
        &self,
        port: u16,
        v6: bool,
        chunks: &[&[u8]],
        pause: Duration,
        read_timeout: Duration,
        limit: u64,
    ) -> Result<Exchange> {
        clients::exchange_in(
            self.client_ns(),
            self.server_ip(v6),
            port,
            chunks,
            pause,
            read_timeout,
            limit,
        )
    }

    /// Starts a [`BulkServer`] on the server's address of the family: every connection
    /// gets a `body_len`-byte HTTP response as soon as its first bytes arrive.
    fn start_bulk_server(&self, port: u16, v6: bool, body_len: u64) -> Result<BulkServer> {
        BulkServer::start_in(self.server_ns(), self.server_ip(v6), port, body_len)
    }
}
