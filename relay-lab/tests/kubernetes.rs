//! deploy/kubernetes, offline (there is no cluster here): `kubectl kustomize` renders it,
//! kubernetes-validate (PyPI, in the lab's venv, with its bundled schemas) accepts every core
//! resource strictly, and the rendered manifests carry what the daemon needs — matching the
//! code, the systemd unit and the configuration they ship.

use std::{path::PathBuf, process::Command};

use relay_userspace::config::Config;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn rendered() -> (String, Vec<Value>) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy/kubernetes"))
        .output()
        .expect("kubectl (installed on these machines) renders the kustomize base");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    (text, docs)
}

use serde::Deserialize;

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Runs kubernetes-validate --strict on `text`; (passed, output).
fn validate(text: &str, name: &str) -> (bool, String) {
    let validator = root().join("target/lab-venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "{} is missing: run `cargo xtask setup`",
        validator.display()
    );
    let file = std::env::temp_dir().join(format!("relay-k8s-{name}-{}.yaml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(validator)
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_kustomize_base_renders_and_every_core_resource_validates_strictly() {
    let (text, docs) = rendered();
    let (ok, out) = validate(&text, "base");
    assert!(ok, "kubernetes-validate: {out}");
    for resource in [
        "namespace/relay",
        "daemonset/relay",
        "configmap/relay-config",
    ] {
        assert!(
            out.contains(&format!("passed for resource {resource}")),
            "{resource} not validated: {out}"
        );
    }
    assert_eq!(docs.len(), 6, "{text}");
    // And the validator does catch a mistake (a misspelt field).
    let broken = text.replacen("hostNetwork: true", "hostNetwrk: true", 1);
    let (ok, out) = validate(&broken, "broken");
    assert!(!ok, "a misspelt field passed: {out}");
}

#[test]
fn the_daemonset_carries_what_the_daemon_and_its_unit_need() {
    let (_, docs) = rendered();
    let ds = kind(&docs, "DaemonSet")[0];
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(spec["hostNetwork"], true);
    assert!(
        spec["nodeSelector"]
            .as_mapping()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert_eq!(c["image"], "registry.example.net/relay:0.1.0-1");

    // Exactly the unit's capabilities, nothing privileged.
    let unit = std::fs::read_to_string(root().join("deploy/relay.service")).unwrap();
    let bounding: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    let mut added = strings(&c["securityContext"]["capabilities"]["add"]);
    added.sort();
    let mut want = bounding.clone();
    want.sort();
    assert_eq!(added, want);
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);

    // The unit's command, plus --clear-drain (the previous pod's preStop drained the node).
    let exec_start: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/relay "))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    let args = strings(&c["args"]);
    assert_eq!(args[..exec_start.len()], exec_start[..]);
    assert_eq!(args[exec_start.len()..], ["--clear-drain"]);

    // The configuration the args name is the ConfigMap's, mounted there, and it loads.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    assert_eq!(mount("/etc/relay/relay.yaml")["subPath"], "relay.yaml");
    let config_map = kind(&docs, "ConfigMap")
        .into_iter()
        .find(|m| {
            m["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("relay-config")
        })
        .unwrap();
    let volumes = spec["volumes"].as_sequence().unwrap();
    let volume = |name: &Value| volumes.iter().find(|v| v["name"] == *name).unwrap();
    assert_eq!(
        volume(&mount("/etc/relay/relay.yaml")["name"])["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let yaml = config_map["data"]["relay.yaml"].as_str().unwrap();
    // Secret files exist only in the pod: point them at a temporary copy to validate the rest.
    let dir = std::env::temp_dir().join(format!("relay-k8s-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("turn-secret"), "a-turn-secret-from-a-secret\n").unwrap();
    let config = Config::parse(
        &yaml.replace("/etc/relay/secrets", dir.to_str().unwrap()),
        "relay.yaml",
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's relay.yaml: {e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    // Its secret files and certificates are where the Secrets are mounted.
    let turn = config.turn.as_ref().unwrap();
    assert!(
        yaml.contains("/etc/relay/secrets/turn-secret") && turn.secret_files.len() == 1,
        "{yaml}"
    );
    assert_eq!(
        volume(&mount("/etc/relay/secrets")["name"])["secret"]["secretName"],
        "relay-secrets"
    );
    let tls = config.api.tls.as_ref().unwrap();
    assert!(tls.cert.starts_with("/etc/relay/tls") && tls.key.starts_with("/etc/relay/tls"));
    assert_eq!(
        volume(&mount("/etc/relay/tls")["name"])["secret"]["secretName"],
        "relay-tls"
    );
    // /proc/sys is read-only in a container: the daemon must not try to set forwarding.
    assert!(!config.xdp.manage_forwarding);

    // The node's bpffs, so the pins outlive the pod; its pin_dir is under it.
    let bpffs = mount("/sys/fs/bpf");
    assert_eq!(volume(&bpffs["name"])["hostPath"]["path"], "/sys/fs/bpf");
    assert!(config.pin_dir.starts_with("/sys/fs/bpf"));

    // Ports and probes match the configuration: HTTPS on the API's port.
    let ports = c["ports"].as_sequence().unwrap();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port("api"), u64::from(config.api.listen.port()));
    assert_eq!(
        port("metrics"),
        u64::from(config.metrics.as_ref().unwrap().listen.port())
    );
    assert_eq!(port("geneve"), u64::from(config.relay.port));
    assert_eq!(port("turn-udp"), u64::from(turn.port));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            (get["path"].as_str(), get["port"].as_str()),
            (Some(path), Some("api"))
        );
        assert_eq!(get["scheme"], "HTTPS", "api.tls is set");
    }

    // preStop drains locally and waits, within the grace period.
    let stop = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(stop[..4], ["/usr/bin/relay", "drain", "--local", "--wait"]);
    let timeout =
        humantime::parse_duration(&stop[stop.iter().position(|a| a == "--timeout").unwrap() + 1])
            .unwrap();
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > timeout.as_secs() + 30,
        "grace {grace} s for a {timeout:?} drain"
    );
}

#[test]
fn monitoring_resources_match_the_shipped_rules_dashboard_and_metrics_port() {
    let (_, docs) = rendered();
    let rule = kind(&docs, "PrometheusRule")[0];
    let alerts: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus-alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus-alerts.yaml"
    );
    let dashboard = kind(&docs, "ConfigMap")
        .into_iter()
        .find(|m| m["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    assert_eq!(
        dashboard["data"]["grafana-dashboard.json"]
            .as_str()
            .unwrap(),
        std::fs::read_to_string(root().join("deploy/grafana-dashboard.json")).unwrap(),
        "deploy/kubernetes/grafana-dashboard.json differs from deploy/grafana-dashboard.json"
    );
    let monitor = kind(&docs, "PodMonitor")[0];
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        (endpoint["port"].as_str(), endpoint["path"].as_str()),
        (Some("metrics"), Some("/metrics"))
    );
    let ds = kind(&docs, "DaemonSet")[0];
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    for d in &docs {
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/part-of"], "relay",
            "{d:?}"
        );
    }
}
