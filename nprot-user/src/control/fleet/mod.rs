//! A fleet of sensors on NATS JetStream (DESIGN §5, docs/fleet.md): one policy in a
//! key-value bucket that every sensor watches ([`bucket`]), heartbeats in a second
//! bucket, every sensor's events in one stream; [`sensor`] is a sensor's side of it,
//! [`operator`] the `nprot fleet …` commands.
//!
//! Without `[fleet]` in the config none of this runs.

pub mod bucket;
pub mod operator;
pub mod sensor;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use serde::Deserialize;

/// `[fleet]`: where the NATS servers are and who this sensor is to them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://…`): several for a cluster.
    pub servers: Vec<String>,
    /// This sensor's name in the fleet (its heartbeat key and events subject); the
    /// host name if unset.
    #[serde(default)]
    pub device: Option<String>,
    /// User name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(default)]
    pub password: Option<String>,
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed).
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    #[serde(default)]
    pub nkey: Option<PathBuf>,
    /// CA certificate (PEM) the servers' certificates are checked against; TLS is
    /// required when set.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Require TLS even without `tls_ca` (the system's roots then).
    #[serde(default)]
    pub tls: bool,
    /// Events held while NATS is away, at most; the oldest go first (counted).
    #[serde(default = "default_event_buffer")]
    pub event_buffer: usize,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u64,
}

fn default_event_buffer() -> usize {
    100_000
}

fn default_heartbeat() -> u64 {
    1
}

/// The state of key-value bucket `bucket` now (messages, last revision): read from its
/// stream, since the store's own `status` repeats what it read when it was opened.
pub async fn bucket_state(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> anyhow::Result<async_nats::jetstream::stream::State> {
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .with_context(|| format!("bucket {bucket}"))?;
    Ok(stream.cached_info().state.clone())
}

impl FleetConfig {
    /// Checks what serde cannot: some server, one kind of credentials, a usable device
    /// name.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("fleet.servers: at least one NATS server URL".into());
        }
        let kinds = [
            self.user.is_some() || self.password.is_some(),
            self.credentials.is_some(),
            self.nkey.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err("fleet: user/password, credentials and nkey exclude each other".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("fleet: user and password go together".into());
        }
        if let Some(d) = &self.device {
            bucket::check_token("fleet.device", d)?;
        }
        if self.event_buffer == 0 {
            return Err("fleet.event_buffer: must be at least 1".into());
        }
        if self.heartbeat_s == 0 {
            return Err("fleet.heartbeat_s: must be at least 1".into());
        }
        Ok(())
    }

    /// The device name: `device`, or the host name made into a key token.
    pub fn device_name(&self) -> String {
        self.device.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            let token: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if token.is_empty() {
                "sensor".into()
            } else {
                token
            }
        })
    }

    /// Connects to the servers with these settings. `wait`: keep trying until a server
    /// answers (a sensor, which must come up while NATS is away), ping every 2 s so that
    /// a dead server is left within seconds, and count every (re)connection in
    /// `connects`; otherwise fail at once (the operator CLI).
    pub async fn connect(
        &self,
        name: &str,
        wait: Option<Arc<AtomicU64>>,
    ) -> anyhow::Result<async_nats::Client> {
        let mut options = match (&self.user, &self.password, &self.credentials, &self.nkey) {
            (Some(user), Some(pass), _, _) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), pass.clone())
            }
            (_, _, Some(creds), _) => async_nats::ConnectOptions::with_credentials_file(creds)
                .await
                .with_context(|| format!("reading NATS credentials {}", creds.display()))?,
            (_, _, _, Some(seed)) => {
                let seed = std::fs::read_to_string(seed)
                    .with_context(|| format!("reading nkey seed {}", seed.display()))?;
                async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            }
            _ => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        } else if self.tls {
            options = options.require_tls(true);
        }
        options = options
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(3)));
        if let Some(connects) = wait {
            options = options
                .retry_on_initial_connect()
                .max_reconnects(None)
                .ping_interval(Duration::from_secs(2))
                .event_callback(move |event| {
                    let connects = Arc::clone(&connects);
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                connects.fetch_add(1, Ordering::Relaxed);
                            }
                            other => log::debug!("fleet: NATS: {other}"),
                        }
                    }
                });
        }
        options
            .connect(self.servers.as_slice())
            .await
            .with_context(|| format!("connecting to NATS at {}", self.servers.join(", ")))
    }
}
