use std::time::Duration;

use super::*;

/// The smallest valid configuration (also the base of the reload tests).
pub(super) const MINIMAL: &str = "\
xdp:
  mode: off
relay:
  listen: [127.0.0.1]
api:
  tokens:
    - name: t
      token: 0123456789abcdef
";

fn error(text: &str) -> ConfigError {
    Config::parse(text, "relay.yaml").expect_err("should be rejected")
}

#[test]
fn the_example_config_loads_and_documents_every_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/relay.example.yaml");
    let config = Config::load(std::path::Path::new(path)).unwrap();
    assert_eq!(config.relay.port, 6081);
    assert_eq!(config.api.tokens.len(), 3);
    assert!(config.api.tokens[2].admin && !config.api.tokens[0].admin);
    assert_eq!(config.fleet.as_ref().unwrap().alternates[0].turn.len(), 2);
    assert_eq!(config.sessions.idle_lifetime, Duration::from_secs(300));
    // Every key of the typed tree appears in the example (serialising the loaded config lists
    // them all, Option fields included because the example sets them).
    let text = std::fs::read_to_string(path).unwrap();
    let yaml = serde_yaml::to_value(&config).unwrap();
    let mut keys = Vec::new();
    collect_keys(&yaml, &mut keys);
    for key in keys {
        assert!(
            text.contains(&format!("{key}:")),
            "`{key}` is not documented in deploy/relay.example.yaml"
        );
    }
}

fn collect_keys(v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                out.push(k.as_str().unwrap().to_string());
                collect_keys(v, out);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| collect_keys(v, out)),
        _ => {}
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = Config::parse(MINIMAL, "relay.yaml").unwrap();
    assert_eq!(c.relay.port, 6081);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.sessions.bind_lifetime, Duration::from_secs(30));
    assert_eq!(c.sessions.idle_lifetime, Duration::from_secs(300));
    assert_eq!(c.sessions.max_sessions, 65_536);
    assert_eq!(c.api.tokens[0].max_sessions, 1000);
    assert_eq!(c.api.requests_per_sec_per_source, 20);
    assert_eq!(c.api.tls, None);
    assert_eq!(c.pin_dir, std::path::PathBuf::from("/sys/fs/bpf/relay"));
    assert_eq!(c.log.level, "info");
    assert!(c.xdp.manage_forwarding);
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = error(&format!("{MINIMAL}sessions:\n  idle_lifetme: 5m\n"));
    assert_eq!(e.key, "sessions.idle_lifetme");
    assert_eq!(e.line, Some(10));
    assert!(e.message.contains("unknown field `idle_lifetme`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("relay.yaml:10: `sessions.idle_lifetme`:"),
        "{e}"
    );

    let e = error(&format!("{MINIMAL}colour: blue\n"));
    assert_eq!(e.key, "colour");
    assert_eq!(e.line, Some(9));
}

#[test]
fn bad_values_are_named_with_their_line() {
    let e = error(&MINIMAL.replace("mode: off", "mode: turbo"));
    assert_eq!(e.key, "xdp.mode");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("turbo"), "{e}");

    let e = error(&format!("{MINIMAL}sessions:\n  bind_lifetime: soon\n"));
    assert_eq!(e.key, "sessions.bind_lifetime");
    assert_eq!(e.line, Some(10));
    assert!(e.message.starts_with("\"soon\" is not a duration"), "{e}");

    // Longer than the pinned maps can carry (and than any use needs).
    let e = error(&format!("{MINIMAL}sessions:\n  idle_lifetime: 31days\n"));
    assert_eq!(e.key, "sessions.idle_lifetime");
    assert!(e.message.contains("between 1s and 30days"), "{e}");

    let e = error(&MINIMAL.replace("[127.0.0.1]", "[127.0.0.1.5]"));
    assert_eq!(e.key, "relay.listen[0]");
    assert_eq!(e.line, Some(4));

    let e = error(&MINIMAL.replace(
        "    - name: t\n",
        "    - name: t\n      max_sessions: lots\n",
    ));
    assert_eq!(e.key, "api.tokens[0].max_sessions");
    assert_eq!(e.line, Some(8));
}

#[test]
fn cross_field_rules_name_the_key_and_line() {
    let e = error(&MINIMAL.replace("mode: off", "mode: native"));
    assert_eq!(e.key, "interfaces");
    assert!(e.message.contains("name the interface"), "{e}");

    let e = error(&MINIMAL.replace("token: 0123456789abcdef", "token: short"));
    assert_eq!(e.key, "api.tokens[0].token");
    assert_eq!(e.line, Some(8));

    let e = error(&MINIMAL.replace(
        "token: 0123456789abcdef",
        "token: 0123456789abcdef\n      token_sha256: 00",
    ));
    assert_eq!(e.key, "api.tokens[0]");
    assert_eq!(e.line, Some(7));

    let e = error(&format!(
        "{MINIMAL}    - name: t\n      token: fedcba9876543210\n"
    ));
    assert_eq!(e.key, "api.tokens[1].name");
    assert_eq!(e.line, Some(9));
    assert!(e.message.contains("duplicate"), "{e}");

    let e = error(&MINIMAL.replace("[127.0.0.1]", "[127.0.0.1, 127.0.0.2]"));
    assert_eq!(e.key, "relay.listen");

    let e = error(&format!("{MINIMAL}relay_port: 1\n"));
    assert_eq!(e.key, "relay_port");

    let e = error(&MINIMAL.replace(
        "relay:\n",
        "relay:\n  advertise:\n    v4: \"[2001:db8::1]:6081\"\n",
    ));
    assert_eq!(e.key, "relay.advertise.v4");
    assert_eq!(e.line, Some(5));

    let e = error(&format!("{MINIMAL}sessions:\n  max_sessions: 0\n"));
    assert_eq!(e.key, "sessions.max_sessions");
    assert_eq!(e.line, Some(10));

    let e = error(&format!("{MINIMAL}log:\n  level: \"[[[\"\n"));
    assert_eq!(e.key, "log.level");

    let e = error(&format!(
        "{MINIMAL}turn:\n  realm: r.test\n  secrets: [a-long-enough-shared-secret-0123]\n  stream_buffers_mib: 0\n"
    ));
    assert_eq!(e.key, "turn.stream_buffers_mib");
    assert_eq!(e.line, Some(12));
}

#[test]
fn an_api_beyond_loopback_needs_tls() {
    for listen in ["0.0.0.0:8443", "198.51.100.7:8443", "\"[::]:8443\""] {
        let e = error(&MINIMAL.replace("api:\n", &format!("api:\n  listen: {listen}\n")));
        assert_eq!(e.key, "api.listen", "{listen}");
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("api.tls"), "{e}");
    }
    let tls = "api:\n  listen: 0.0.0.0:8443\n  tls:\n    cert: /etc/relay/api.crt\n    key: /etc/relay/api.key\n";
    let config = Config::parse(&MINIMAL.replace("api:\n", tls), "relay.yaml").unwrap();
    assert_eq!(
        config.api.tls.unwrap().cert,
        std::path::Path::new("/etc/relay/api.crt")
    );
    // Loopback in either family needs none.
    for listen in ["127.0.0.2:8080", "\"[::1]:8080\""] {
        Config::parse(
            &MINIMAL.replace("api:\n", &format!("api:\n  listen: {listen}\n")),
            "relay.yaml",
        )
        .unwrap();
    }
    let e = error(&MINIMAL.replace(
        "api:\n",
        "api:\n  tls:\n    cert: api.crt\n    key: /etc/relay/api.key\n",
    ));
    assert_eq!(e.key, "api.tls.cert");
    assert_eq!(e.line, Some(7));
}

#[test]
fn missing_required_section_is_reported() {
    let e = error("xdp:\n  mode: off\n");
    assert!(e.message.contains("missing field `api`"), "{e}");
}

#[test]
fn fleet_alternates_name_their_bad_key() {
    let base = "interfaces: [eth0]\napi:\n  tokens:\n    - name: a\n      token: a-token-of-16-chars-or-more\nfleet:\n  alternates:\n";
    for (alternate, key, says) in [
        (
            "    - api: ftp://x\n",
            "fleet.alternates[0].api",
            "not an http(s) URL",
        ),
        (
            "    - turn: [0.0.0.0:3478]\n",
            "fleet.alternates[0].turn",
            "not an address clients can reach",
        ),
        ("    - {}\n", "fleet.alternates[0]", "give its api URL"),
        (
            "    - colour: red\n",
            "fleet.alternates[0].colour",
            "unknown field",
        ),
    ] {
        let e = Config::parse(&format!("{base}{alternate}"), "test").unwrap_err();
        assert!(
            e.key.starts_with(key) || e.message.contains(key),
            "{alternate}: {e:?}"
        );
        assert!(e.message.contains(says), "{alternate}: {e:?}");
        assert!(e.line.is_some(), "{e:?}");
    }
}

#[test]
fn turn_secret_files_are_read_checked_and_named_by_key() {
    let dir = std::env::temp_dir().join(format!("relay-secret-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("turn-secret");
    std::fs::write(&good, "a-secret-from-a-mounted-file\n").unwrap();
    let short = dir.join("short");
    std::fs::write(&short, "tiny\n").unwrap();
    let config = |file: &std::path::Path| {
        format!(
            "interfaces: [eth0]\napi:\n  tokens:\n    - name: a\n      token: a-token-of-16-chars-or-more\n\
             turn:\n  realm: r.test\n  secret_files:\n    - {}\n",
            file.display()
        )
    };
    let c = Config::parse(&config(&good), "test").unwrap();
    // The file's secret, without the newline `kubectl create secret --from-file` keeps.
    assert_eq!(
        c.turn.as_ref().unwrap().all_secrets(),
        ["a-secret-from-a-mounted-file"]
    );
    for (file, says) in [
        (short.clone(), "at least 16"),
        (dir.join("missing"), "cannot read"),
        (std::path::PathBuf::from("relative"), "absolute"),
    ] {
        let e = Config::parse(&config(&file), "test").unwrap_err();
        assert_eq!(e.key, "turn.secret_files[0]", "{e:?}");
        assert!(e.message.contains(says), "{e:?}");
        assert!(e.line.is_some(), "{e:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
