//! End-to-end tests of what a person sees of a blocked plain-HTTP request (issue 18): the
//! kernel forges the server's answer into the sensor's page (403), a 302 to the
//! indicator's `redirect_url`, or for a Warn a page whose Continue link grants the
//! bypass. Real clients: curl (HTTP/1.0, 1.1, HEAD) and headless Chromium.
//!
//! Every test fails against a sensor that only resets: the client gets no page.
//!
//! Run as root, serially: `cargo xtask test` (or
//! `cargo test -p nprot-tests --test page -- --test-threads=1`).
// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, time::Duration};

use nprot_tests::{
    ClientServer, EVENT_TIMEOUT, Env, Value, assert_reset, ev,
    indicators::{indicator, with},
    nginx::{BODY_GOOD, BODY_ROOT},
    quic::{ChromiumOpts, ChromiumRun, chromium_load},
};

const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";

fn start(indicators: &[Value], extra: &[&str]) -> Env {
    let mut args = vec!["--block-page=page"];
    args.extend_from_slice(extra);
    Env::start_enforcing("block", indicators, &args).expect("test environment with the sensor")
}

fn wait(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    env.events()
        .wait_for_described(what, pred, EVENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn bad_site() -> Value {
    with(
        indicator("i1", "DomainName", "bad.example", "Block"),
        "title",
        "Bad site",
    )
}

/// Where screenshots go: kept after the test, under the target directory.
fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium loading `url` over plain HTTP, every name mapped to the server.
fn chromium(env: &Env, url: &str, screenshot: Option<PathBuf>) -> ChromiumRun {
    let opts = ChromiumOpts {
        force_quic: false,
        url: Some(url.to_owned()),
        screenshot,
        timeout: Duration::from_secs(25),
        // Plain HTTP as asked: no automatic upgrade to HTTPS first.
        extra: vec!["--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable".into()],
        ..ChromiumOpts::default()
    };
    chromium_load(env.client_ns(), env.server_ip(false), "*", env.dir(), &opts).unwrap()
}

#[test]
fn curl_gets_the_page_for_http_1_1_1_0_and_head_and_https_is_still_reset() {
    let env = start(&[bad_site()], &[]);
    let page = env
        .curl_http("bad.example", 80, false, "/x", &["-i"])
        .unwrap();
    assert_eq!(page.http_code, 403, "{}", page.body);
    assert!(
        page.body.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Connection: close\r\n"), "{}", page.body);
    assert!(
        page.body.contains("bad.example/x") && page.body.contains("Bad site"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains(BODY_ROOT),
        "the server's answer came through: {}",
        page.body
    );
    wait(&env, "the block of the page's request", |e| {
        ev::is(e, BLOCKED) && e["LocalPort"] == page.local_port
    });

    let old = env
        .curl_http("bad.example", 80, false, "/", &["-i", "--http1.0"])
        .unwrap();
    assert!(
        old.body.starts_with("HTTP/1.0 403 Forbidden\r\n"),
        "{}",
        old.body
    );
    let head = env
        .curl_http("bad.example", 80, false, "/", &["-I"])
        .unwrap();
    assert_eq!(head.http_code, 403);
    assert!(
        !head.body.contains("<html>"),
        "a HEAD got a body: {}",
        head.body
    );

    // No certificate to answer HTTPS with: reset, as before.
    let tls = env.curl_https_any("bad.example", 443, false, "/").unwrap();
    assert_reset("https://bad.example/", &tls, || env.diagnostics());
    let stats = env.stats().unwrap();
    assert_eq!(stats["kernel"]["pages_sent"], 3, "{stats}");
    assert_eq!(stats["kernel"]["page_failed"], 0, "{stats}");
    assert_eq!(stats["pipeline"]["pages"], 3, "{stats}");
}

/// With checksums computed by the server's stack and checked by the client's (offloads
/// off on both veth ends), the forged page is still taken: its TCP and IP checksums are
/// right, not merely left unchecked as the veth's offloads would let them be.
#[test]
fn the_page_passes_a_client_that_verifies_checksums() {
    let env = start(&[bad_site()], &[]);
    let ethtool = |ns: &str, dev: &str, what: &str| {
        let out = nprot_tests::netns::netns_cmd(ns, "ethtool")
            .args(["-K", dev, what, "off"])
            .output()
            .unwrap();
        assert!(out.status.success(), "ethtool -K {dev} {what} off: {out:?}");
    };
    ethtool(&env.topo.server_ns, &env.topo.server_if, "tx");
    ethtool(&env.topo.client_ns, &env.topo.client_if, "rx");
    let good = env
        .curl_http("good.example", 80, false, "/good", &[])
        .unwrap();
    assert!(good.body.contains(BODY_GOOD), "{}", good.body);
    for v6 in [false, true] {
        for (path, extra) in [("/", &[][..]), ("/a-longer-path?q=1", &["--http1.0"][..])] {
            let page = env.curl_http("bad.example", 80, v6, path, extra).unwrap();
            assert_eq!(page.http_code, 403, "{}", page.body);
            assert!(page.body.contains("Bad site"), "{}", page.body);
        }
    }
    assert_eq!(env.stats().unwrap()["kernel"]["pages_sent"], 4);
}

#[test]
fn block_page_reset_keeps_the_bare_reset() {
    let env = Env::start_enforcing("block", &[bad_site()], &["--block-page=reset"]).unwrap();
    let run = env
        .curl_http_any("bad.example", 80, false, "/", &[])
        .unwrap();
    assert_reset("http://bad.example/", &run, || env.diagnostics());
    assert_eq!(env.stats().unwrap()["kernel"]["pages_sent"], 0);
}

#[test]
fn chromium_shows_the_page_and_follows_a_redirect_url() {
    let redirected = with(
        indicator("r1", "DomainName", "moved.example", "Block"),
        "redirect_url",
        "http://good.example/good",
    );
    let env = start(&[bad_site(), redirected], &[]);
    let run = chromium(&env, "http://bad.example/", None);
    assert!(
        run.dom.contains("This site is blocked")
            && run.dom.contains("bad.example/")
            && run.dom.contains("Bad site"),
        "DOM: {}\nstderr: {}",
        run.dom,
        run.stderr
    );
    let png = output_dir().join("block-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(&env, "http://bad.example/", Some(png.clone()));
    let size = std::fs::metadata(&png).map_or(0, |m| m.len());
    assert!(
        size > 1000,
        "no screenshot at {} ({size} bytes)",
        png.display()
    );

    let run = chromium(&env, "http://moved.example/", None);
    assert!(
        run.dom.contains(BODY_GOOD),
        "not redirected: {}\n{}",
        run.dom,
        run.stderr
    );
    wait(&env, "the block of moved.example", |e| {
        ev::is(e, BLOCKED) && e["AdditionalFields"]["IndicatorId"] == "r1"
    });
}

#[test]
fn chromium_follows_continue_and_the_next_load_passes() {
    let warned = with(
        indicator("w1", "DomainName", "warned.example", "Warn"),
        "title",
        "Risky site",
    );
    let env = start(&[warned], &["--warn-bypass=user"]);
    let run = chromium(&env, "http://warned.example/", None);
    assert!(
        run.dom.contains("Risky site"),
        "{}\n{}",
        run.dom,
        run.stderr
    );
    let link = run
        .dom
        .split("id=\"continue\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no Continue link: {}", run.dom))
        .to_owned();
    let run = chromium(&env, &format!("http://warned.example{link}"), None);
    assert!(
        run.dom.contains(BODY_ROOT),
        "Continue did not pass: {}\n{}",
        run.dom,
        run.stderr
    );
    let bypass = wait(&env, "the bypass the Continue link granted", |e| {
        ev::is(e, "NetworkProtectionUserBypassEvent")
    });
    assert_eq!(
        bypass["AdditionalFields"]["GrantedVia"], "continue_link",
        "{bypass}"
    );
    assert_eq!(bypass["AdditionalFields"]["IndicatorId"], "w1", "{bypass}");
    assert!(
        bypass["AdditionalFields"]["GrantedBy"].is_string(),
        "{bypass}"
    );
    let next = env
        .curl_http("warned.example", 80, false, "/", &[])
        .unwrap();
    assert!(next.body.contains(BODY_ROOT), "{}", next.body);
}

#[test]
fn without_user_bypass_the_warning_offers_no_continue() {
    let warned = indicator("w1", "DomainName", "warned.example", "Warn");
    let env = start(&[warned], &[]);
    let page = env
        .curl_http("warned.example", 80, false, "/", &[])
        .unwrap();
    assert_eq!(page.http_code, 403);
    assert!(page.body.contains("ask an administrator"), "{}", page.body);
    assert!(!page.body.contains(".nprot-continue"), "{}", page.body);
}
