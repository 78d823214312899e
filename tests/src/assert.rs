//! Strict assertions on what a client saw, shared by every test file.

use crate::{clients::CurlRun, proxy::Transfer};

/// curl's exit codes for a connection reset by the peer: 35 when it comes during the TLS
/// handshake (`SSL_connect: Connection reset by peer`), 56 when it comes while receiving
/// (`Recv failure: Connection reset by peer`). A timeout (28), an empty reply (52) or a
/// refused connect (7) is not a reset.
pub const RESET_EXIT_CODES: [i32; 2] = [35, 56];

/// What a client saw of one transfer, as far as [`assert_reset`] is concerned.
pub trait ClientResult: std::fmt::Debug {
    /// The client's exit code for the transfer (`None`: killed by a signal).
    fn exit_code(&self) -> Option<i32>;
    /// The client's error message for the transfer (curl's stderr or `%{errormsg}`).
    fn error_message(&self) -> &str;
    /// The HTTP status received (0: none).
    fn http_code(&self) -> u16;
    /// Response bytes that reached the client.
    fn bytes_received(&self) -> u64;
}

impl ClientResult for CurlRun {
    fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    fn error_message(&self) -> &str {
        &self.stderr
    }

    fn http_code(&self) -> u16 {
        self.http_code
    }

    fn bytes_received(&self) -> u64 {
        // What curl counted and what it delivered; both must be 0.
        self.size_download.max(self.body_len as u64)
    }
}

impl ClientResult for Transfer {
    fn exit_code(&self) -> Option<i32> {
        Some(self.exit_code)
    }

    fn error_message(&self) -> &str {
        &self.errormsg
    }

    fn http_code(&self) -> u16 {
        self.http_code
    }

    fn bytes_received(&self) -> u64 {
        self.size_download
    }
}

/// Why `r` is not a strict reset, or `None` if it is one: the client failed with a reset
/// exit code ([`RESET_EXIT_CODES`]), said "reset by peer", and received no response byte
/// and no status.
pub fn not_a_reset(r: &impl ClientResult) -> Option<String> {
    let mut why = Vec::new();
    match r.exit_code() {
        Some(code) if RESET_EXIT_CODES.contains(&code) => {}
        code => why.push(format!(
            "exit code {code:?} is not a reset (35 or 56; 28 is a timeout)"
        )),
    }
    if !r.error_message().contains("reset by peer") {
        why.push(format!(
            "the error {:?} does not say \"reset by peer\"",
            r.error_message().trim()
        ));
    }
    if r.http_code() != 0 {
        why.push(format!("a response status {} arrived", r.http_code()));
    }
    if r.bytes_received() != 0 {
        why.push(format!("{} response bytes arrived", r.bytes_received()));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Asserts that the client's connection was reset with no response byte received (see
/// [`not_a_reset`]); panics with `what`, the reasons, `r` and `diagnostics()` otherwise.
#[track_caller]
pub fn assert_reset(what: &str, r: &impl ClientResult, diagnostics: impl FnOnce() -> String) {
    if let Some(why) = not_a_reset(r) {
        panic!(
            "{what}: expected a connection reset with no response byte, but {why}\n\
             got {r:?}\n{}",
            diagnostics()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit_code: Option<i32>, stderr: &str, http_code: u16, bytes: u64) -> CurlRun {
        CurlRun {
            exit_code,
            local_port: 40000,
            http_code,
            size_download: bytes,
            body_len: 0,
            body: String::new(),
            stderr: stderr.to_owned(),
        }
    }

    #[test]
    fn only_a_reset_without_bytes_is_a_reset() {
        let reset = "curl: (56) Recv failure: Connection reset by peer";
        assert_eq!(not_a_reset(&run(Some(56), reset, 0, 0)), None);
        let tls = "curl: (35) OpenSSL SSL_connect: Connection reset by peer in connection to x";
        assert_eq!(not_a_reset(&run(Some(35), tls, 0, 0)), None);
        let timeout = "curl: (28) Operation timed out after 5000 milliseconds";
        assert!(not_a_reset(&run(Some(28), timeout, 0, 0)).is_some());
        let empty = "curl: (52) Empty reply from server";
        assert!(not_a_reset(&run(Some(52), empty, 0, 0)).is_some());
        assert!(not_a_reset(&run(Some(56), reset, 200, 0)).is_some());
        assert!(not_a_reset(&run(Some(56), reset, 0, 1)).is_some());
        assert!(not_a_reset(&run(None, reset, 0, 0)).is_some());
        let transfer = Transfer {
            local_port: 40000,
            http_code: 0,
            size_download: 0,
            exit_code: 28,
            num_connects: 1,
            errormsg: "Operation timed out".into(),
        };
        assert!(not_a_reset(&transfer).is_some(), "a timeout is not a reset");
    }
}
