//! What a reload (SIGHUP) can apply to a running daemon, and what needs a restart.
//!
//! A reload applies the API's tokens (with their quotas), its certificate files and its
//! per-source request rate, TURN's shared secrets, static users and certificate files, and the
//! fleet's alternates: the
//! things operators rotate or tune while sessions run. Everything
//! else (interfaces, addresses, the fast path, map sizes, lifetimes) shapes state that already
//! exists, so a change there is reported and left for a restart — which loses no session.

use super::Config;

impl Config {
    /// The settings that differ in `new` but only take effect after a restart, named by key.
    pub fn restart_needed_for(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let (old_api, new_api) = (&self.api, &new.api);
        let sections = [
            ("interfaces", self.interfaces != new.interfaces),
            ("xdp", self.xdp != new.xdp),
            ("relay", self.relay != new.relay),
            ("api.listen", old_api.listen != new_api.listen),
            // Turning TLS on or off changes the protocol clients speak: a restart.
            ("api.tls", old_api.tls.is_some() != new_api.tls.is_some()),
            (
                "api.max_body_bytes",
                old_api.max_body_bytes != new_api.max_body_bytes,
            ),
            ("sessions", self.sessions != new.sessions),
            ("pin_dir", self.pin_dir != new.pin_dir),
            ("log", self.log != new.log),
            ("metrics", self.metrics != new.metrics),
            ("turn", turn_restart(&self.turn) != turn_restart(&new.turn)),
        ];
        // Not listed, because a reload applies them: api.tokens, the api.tls file paths,
        // api.requests_per_sec_per_source, turn.secrets (and secret_files), turn.users, the turn.tls files and
        // fleet (the alternates).
        for (key, differs) in sections {
            if differs {
                changed.push(key);
            }
        }
        changed
    }
}

/// The TURN settings only a restart applies: everything but what a reload swaps in place.
fn turn_restart(turn: &Option<super::TurnConfig>) -> Option<super::TurnConfig> {
    turn.clone().map(|mut t| {
        t.secrets.clear();
        t.secret_files.clear();
        t.users.clear();
        if let Some(tls) = &mut t.tls {
            tls.cert = Default::default();
            tls.key = Default::default();
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::MINIMAL as BASE;

    fn parse(text: &str) -> Config {
        Config::parse(text, "relay.yaml").unwrap()
    }

    #[test]
    fn tokens_certificates_and_request_rate_reload_in_place() {
        let old = parse(BASE);
        let new = parse(&format!(
            "{BASE}    - name: u\n      token: fedcba9876543210\n      max_sessions: 3\n  \
             requests_per_sec_per_source: 5\n"
        ));
        assert!(old.restart_needed_for(&new).is_empty());
        let tls = |name: &str| {
            parse(&BASE.replace(
                "api:\n",
                &format!("api:\n  tls:\n    cert: /etc/{name}.crt\n    key: /etc/{name}.key\n"),
            ))
        };
        assert!(tls("a").restart_needed_for(&tls("b")).is_empty());
    }

    #[test]
    fn everything_else_is_named_for_a_restart() {
        let old = parse(BASE);
        let new = parse(&format!(
            "{}sessions:\n  idle_lifetime: 1m\nlog:\n  level: debug\n",
            BASE.replace("[127.0.0.1]", "[127.0.0.2]")
                .replace("api:\n", "api:\n  listen: 127.0.0.1:9000\n")
        ));
        assert_eq!(
            old.restart_needed_for(&new),
            ["relay", "api.listen", "sessions", "log"]
        );
        let with_tls = parse(&BASE.replace(
            "api:\n",
            "api:\n  tls:\n    cert: /etc/a.crt\n    key: /etc/a.key\n",
        ));
        assert_eq!(old.restart_needed_for(&with_tls), ["api.tls"]);
    }

    #[test]
    fn turn_secrets_users_and_certificates_reload_the_rest_restarts() {
        let turn = |secret: &str, user: &str, cert: &str, port: u16| {
            parse(&format!(
                "{BASE}turn:\n  realm: r\n  port: {port}\n  secrets: [{secret}]\n  users:\n    - name: {user}\n      password: p\n  tls:\n    cert: /etc/{cert}.crt\n    key: /etc/{cert}.key\n"
            ))
        };
        let old = turn("0123456789abcdef", "a", "x", 3478);
        assert!(
            old.restart_needed_for(&turn("fedcba9876543210", "b", "y", 3478))
                .is_empty()
        );
        assert_eq!(
            old.restart_needed_for(&turn("0123456789abcdef", "a", "x", 3479)),
            ["turn"]
        );
        assert_eq!(parse(BASE).restart_needed_for(&old), ["turn"]);
    }
}
