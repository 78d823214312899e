//! End-to-end tests of the desktop prompt (issue 18, item 3): `nprot notify` agents of
//! two real unprivileged users, each on a session bus of its own (`dbus-daemon`), the
//! first with a real notification server (dunst on Xvfb). A Block of the first user's
//! flow is shown on its desktop and on nobody else's; a Warn is shown with an Allow
//! action, which, invoked through dunst (`dunstctl action`, i.e. dunst's own
//! ActionInvoked signal), asks the daemon for the bypass: granted and logged with the
//! user's account under `warn_bypass = "user"`, refused under `"admin"`.
//!
//! The clients run as the test users (`runuser`), so that process attribution names
//! their accounts in the events, which is what the daemon routes prompts by.
//!
//! Run as root, serially: `cargo test -p nprot-tests --test notify -- --test-threads=1`.
// A test harness: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::format_collect,
    clippy::manual_let_else,
    clippy::needless_pass_by_value
)]

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use nprot_tests::{
    CurlRun, EVENT_TIMEOUT, Env, Value,
    desktop::{Session, TestUser, curl_as},
    ev,
    indicators::{indicator, with},
    sensor::sensor_binary,
};

/// How long a prompt may take from the flow to the notification server.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The sensor enforcing a Block and a Warn, with desktop agents' socket on, and the
/// sessions of the test users (dropped first: fields drop in order).
struct World {
    a: Session,
    b: Option<Session>,
    env: Env,
    /// The sensor's config file.
    config: PathBuf,
}

impl World {
    /// Starts the sensor with `warn_bypass`, user A's session with dunst and its agent,
    /// and, if `with_b`, user B's session (no notification server) and agent.
    fn start(warn_bypass: &str, with_b: bool) -> World {
        let mut env = Env::start_without_sensor().expect("test environment");
        // The users' agents must reach the socket inside the test's directory.
        std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o755))
            .expect("open the test dir");
        let socket = env.dir().join("notify").join("notify.sock");
        let config = env.dir().join("nprot.toml");
        std::fs::write(
            &config,
            format!(
                "notify_socket = \"{}\"\nwarn_bypass = \"{warn_bypass}\"\n",
                socket.display()
            ),
        )
        .expect("config");
        enforce(&mut env, &config);
        assert!(
            socket.exists(),
            "no notify socket at {}\n{}",
            socket.display(),
            env.diagnostics()
        );

        let a = start_session(&env, "a", true, &socket);
        let b = with_b.then(|| start_session(&env, "b", false, &socket));
        World { a, b, env, config }
    }

    fn curl(&self, session: &Session, name: &str) -> CurlRun {
        curl_as(
            &self.env.topo.client_ns,
            &session.user,
            name,
            self.env.server_ip(false),
        )
        .expect("curl runs")
    }

    fn diagnostics(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.env.diagnostics(),
            self.a.diagnostics(),
            self.b
                .as_ref()
                .map(Session::diagnostics)
                .unwrap_or_default()
        )
    }

    /// Waits for `user`'s Blocked event of `host` (with `action`), returns it.
    fn wait_blocked(&self, user: &TestUser, host: &str, action: &str) -> Value {
        self.env
            .events()
            .wait_for_described(
                &format!("the {action} event of {}'s flow to {host}", user.name),
                |e| {
                    ev::is(e, "ExploitGuardNetworkProtectionBlocked")
                        && e["InitiatingProcessAccountName"] == user.name.as_str()
                        && e["RemoteUrl"] == host
                        && e["AdditionalFields"]["Action"] == action
                },
                EVENT_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    /// Blocked events of `user`'s flows to `host` so far.
    fn blocked_count(&self, user: &TestUser, host: &str) -> usize {
        self.env
            .events()
            .events()
            .expect("events")
            .iter()
            .filter(|e| {
                ev::is(e, "ExploitGuardNetworkProtectionBlocked")
                    && e["InitiatingProcessAccountName"] == user.name.as_str()
                    && e["RemoteUrl"] == host
            })
            .count()
    }

    /// Waits until `session`'s bus has carried a Notify whose body starts with `body`.
    #[track_caller]
    fn wait_notify(&self, session: &Session, body: &str) -> String {
        let needle = format!("string \"{body}");
        let seen = session
            .monitor()
            .wait_for(|t| t.contains(&needle), PROMPT_TIMEOUT);
        let text = session.monitor().text();
        assert!(
            seen,
            "no Notify with {needle:?} on {}'s bus; the bus said:\n{text}\n{}",
            session.user.name,
            self.diagnostics()
        );
        text
    }

    /// `dunstctl count displayed` of A's dunst, awaited until it is at least `n`.
    fn wait_displayed(&self, n: u32) {
        let deadline = std::time::Instant::now() + PROMPT_TIMEOUT;
        loop {
            let count: u32 = self
                .a
                .dunstctl(&["count", "displayed"])
                .expect("dunstctl count")
                .trim()
                .parse()
                .unwrap_or(0);
            if count >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dunst displays {count} notifications, not {n}\n{}",
                self.diagnostics()
            );
            // Poll interval: dunst moves a notification from its queue to the screen on
            // its own loop, and says nothing when it does.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts the sensor enforcing the tests' Block and Warn with `config`.
fn enforce(env: &mut Env, config: &std::path::Path) {
    let indicators = [
        with(
            indicator("blk", "DomainName", "bad.example", "Block"),
            "title",
            "no bad sites",
        ),
        with(
            indicator("wrn", "DomainName", "warn.example", "Warn"),
            "title",
            "think twice",
        ),
    ];
    env.enforce(
        "block",
        &indicators,
        &["--config", &config.to_string_lossy()],
    )
    .expect("sensor with the notify socket");
}

/// A test user's session in the test's directory with `nprot notify` running in it,
/// connected.
fn start_session(env: &Env, tag: &str, with_dunst: bool, socket: &std::path::Path) -> Session {
    let user = TestUser::create(tag).expect("test user");
    let dir: PathBuf = env.dir().join(format!("session-{tag}"));
    let mut session = Session::start(user, &dir, with_dunst).expect("desktop session");
    let nprot = sensor_binary().expect("nprot binary");
    let mut agent = session.cmd(&nprot.to_string_lossy());
    agent.arg("notify").arg("--socket").arg(socket);
    session
        .spawn("nprot notify", agent)
        .expect("start the agent");
    let log = session.stderr_of("nprot notify").expect("agent's stderr");
    assert!(
        log.wait_for(
            |t| t.contains("connected to the nprot daemon"),
            PROMPT_TIMEOUT
        ),
        "the agent of {} did not connect:\n{}\n{}",
        session.user.name,
        session.diagnostics(),
        env.diagnostics()
    );
    session
}

#[track_caller]
fn assert_reset(w: &World, what: &str, run: &CurlRun) {
    assert!(
        run.was_reset(),
        "{what} was not reset: {run:?}\n{}",
        w.diagnostics()
    );
}

/// Occurrences of `needle` in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// A's Block reaches A's dunst and only A's bus; B's Block only B's. A's Warn comes with
/// an Allow action; dunst invoking it makes the daemon grant the bypass, logged with A's
/// account, and A's next request to the warned host passes.
#[test]
fn prompts_reach_their_own_user_only_and_allow_bypasses_a_warn() {
    let w = World::start("user", true);
    let b = w.b.as_ref().expect("B's session");

    // A Block of A's flow: a notification on A's desktop.
    assert_reset(&w, "A's https://bad.example", &w.curl(&w.a, "bad.example"));
    w.wait_blocked(&w.a.user, "bad.example", "Block");
    w.wait_notify(&w.a, "blocked: bad.example (no bad sites)");
    w.wait_displayed(1);

    // A Block of B's flow: on B's bus (where no server answers), not on A's.
    assert_reset(&w, "B's https://bad.example", &w.curl(b, "bad.example"));
    w.wait_blocked(&b.user, "bad.example", "Block");
    w.wait_notify(b, "blocked: bad.example (no bad sites)");

    // A's Warn, on a clean screen so that it is dunst's first notification.
    w.a.dunstctl(&["close-all"]).expect("dunstctl close-all");
    assert_reset(
        &w,
        "A's https://warn.example",
        &w.curl(&w.a, "warn.example"),
    );
    w.wait_blocked(&w.a.user, "warn.example", "Warn");
    let text = w.wait_notify(&w.a, "warned: warn.example (think twice)");
    let warn_call = &text[text.find("warned: warn.example").unwrap_or(0)..];
    assert!(
        warn_call.contains("string \"allow\"") && warn_call.contains("string \"Allow\""),
        "the Warn prompt has no Allow action:\n{text}"
    );

    // Every prompt of A's so far has reached A's bus (the Warn came after them, in
    // order): A saw exactly its own Blocks, B none of A's.
    let a_text = w.a.monitor().text();
    assert_eq!(
        count(&a_text, "string \"blocked: bad.example"),
        w.blocked_count(&w.a.user, "bad.example"),
        "A's bus carried other than A's Blocks:\n{a_text}"
    );
    // B's agent gets a Block of its own as a barrier: what A's flows might have sent it
    // would have come first.
    assert_reset(
        &w,
        "B's second https://bad.example",
        &w.curl(b, "bad.example"),
    );
    let b_blocks = w.blocked_count(&b.user, "bad.example");
    assert!(
        b.monitor().wait_for(
            |t| count(t, "string \"blocked: bad.example") >= b_blocks,
            PROMPT_TIMEOUT
        ),
        "B's Blocks not all shown\n{}",
        w.diagnostics()
    );
    let b_text = b.monitor().text();
    assert!(
        !b_text.contains("warn.example")
            && count(&b_text, "string \"blocked: bad.example") == b_blocks,
        "B's bus carried A's prompts:\n{b_text}"
    );

    // Allow, as a click would: dunst's own action on its only notification (one action:
    // dunst invokes it, ActionInvoked(id, "allow")).
    w.wait_displayed(1);
    w.a.dunstctl(&["action", "0"]).expect("dunstctl action");
    let bypass = w
        .env
        .events()
        .wait_for_described(
            "the bypass granted from A's prompt",
            |e| ev::is(e, "NetworkProtectionUserBypassEvent"),
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", w.diagnostics()));
    let f = &bypass["AdditionalFields"];
    assert_eq!(
        (
            bypass["RemoteUrl"].as_str(),
            f["IndicatorId"].as_str(),
            f["GrantedVia"].as_str(),
            f["GrantedBy"].as_str()
        ),
        (
            Some("warn.example"),
            Some("wrn"),
            Some("desktop_prompt"),
            Some(w.a.user.name.as_str())
        ),
        "{bypass}"
    );
    let text = w.wait_notify(&w.a, "allowed: warn.example");
    assert!(!text.contains("not allowed"), "{text}");
    let run = w.curl(&w.a, "warn.example");
    assert_eq!(
        run.http_code,
        200,
        "A's https://warn.example after the bypass: {run:?}\n{}",
        w.diagnostics()
    );
    assert!(
        !b.monitor().text().contains("allowed"),
        "B was told of A's bypass:\n{}",
        b.monitor().text()
    );
}

/// Under `warn_bypass = "admin"` the prompt's Allow is refused, said so on the desktop,
/// and nothing is bypassed.
#[test]
fn allow_is_refused_when_bypasses_need_an_administrator() {
    let w = World::start("admin", false);
    assert_reset(
        &w,
        "A's https://warn.example",
        &w.curl(&w.a, "warn.example"),
    );
    w.wait_blocked(&w.a.user, "warn.example", "Warn");
    w.wait_notify(&w.a, "warned: warn.example (think twice)");
    w.wait_displayed(1);
    w.a.dunstctl(&["action", "0"]).expect("dunstctl action");
    let text = w.wait_notify(&w.a, "not allowed: warn.example");
    assert!(text.contains("administrator"), "{text}");
    // The daemon logs a bypass before it answers: none came.
    let events = w.env.events().events().expect("events");
    assert!(
        !events
            .iter()
            .any(|e| ev::is(e, "NetworkProtectionUserBypassEvent")),
        "a bypass was granted:\n{}",
        w.env.events().report(&events)
    );
    assert_reset(
        &w,
        "A's https://warn.example after the refusal",
        &w.curl(&w.a, "warn.example"),
    );
}

/// An agent outlives a restart of the daemon: it reconnects by itself, and the new
/// daemon's prompts reach it.
#[test]
fn the_agent_reconnects_when_the_daemon_restarts() {
    let mut w = World::start("user", false);
    let log = w.a.stderr_of("nprot notify").expect("agent's stderr");
    w.env
        .sensor_mut()
        .expect("sensor")
        .stop(Duration::from_secs(5))
        .expect("stop the sensor");
    w.env.sensor = None;
    assert!(
        log.wait_for(|t| t.contains("closed the connection"), PROMPT_TIMEOUT),
        "the agent did not see the daemon go\n{}",
        w.diagnostics()
    );
    enforce(&mut w.env, &w.config);
    // The agent's backoff is at most 30 s between tries.
    assert!(
        log.wait_for(
            |t| count(t, "connected to the nprot daemon") >= 2,
            Duration::from_secs(40)
        ),
        "the agent did not reconnect\n{}",
        w.diagnostics()
    );
    assert_reset(&w, "A's https://bad.example", &w.curl(&w.a, "bad.example"));
    w.wait_blocked(&w.a.user, "bad.example", "Block");
    w.wait_notify(&w.a, "blocked: bad.example (no bad sites)");
}
