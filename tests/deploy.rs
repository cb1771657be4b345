//! The deployment files under deploy/ (and the Dockerfile, the Debian
//! recipe) agree with each other and with what portico accepts: no cluster
//! or service manager runs here, so the manifests are parsed and their
//! numbers, ports and paths are checked against the config they ship, and
//! every shipped config goes through the real `portico check`.

use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of every YAML file in deploy/kubernetes, by kind and name.
fn manifests() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    let dir = root().join("deploy/kubernetes");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let kind = v["kind"].as_str().expect("kind").to_string();
            let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
            assert!(
                out.insert((kind.clone(), name.clone()), v).is_none(),
                "{kind}/{name} twice"
            );
        }
    }
    out
}

fn get<'a>(m: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    m.get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/kubernetes"))
}

fn duration(v: &toml::Value, what: &str) -> Duration {
    humantime::parse_duration(v.as_str().unwrap_or_else(|| panic!("{what} not a string")))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn addr(v: &toml::Value, what: &str) -> SocketAddr {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} missing"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `portico check` on `text`, written as proxy.toml in a fresh folder.
fn portico_check(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove("PORTICO_CONFIG")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{what}: portico check failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok", "{what}");
}

/// The ConfigMap's proxy.toml, as text and parsed.
fn configmap_config(m: &BTreeMap<(String, String), Value>) -> (String, toml::Value) {
    let cm = get(m, "ConfigMap", "portico-config");
    let text = cm["data"]["proxy.toml"]
        .as_str()
        .expect("ConfigMap data proxy.toml")
        .to_string();
    let parsed: toml::Value = toml::from_str(&text).expect("ConfigMap proxy.toml is TOML");
    (text, parsed)
}

fn container(m: &BTreeMap<(String, String), Value>) -> &Value {
    let d = get(m, "Deployment", "portico");
    let cs = d["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    cs.iter()
        .find(|c| c["name"].as_str() == Some("portico"))
        .expect("a container named portico")
}

/// A probe's or Service's port: a number, or the name of a containerPort.
fn container_port(c: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("port is a number or a name");
    let p = c["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no containerPort named {name}"));
    p["containerPort"].as_u64().expect("containerPort") as u16
}

#[test]
fn configmap_config_passes_portico_check() {
    let m = manifests();
    let (text, _) = configmap_config(&m);
    portico_check(&text, "deploy/kubernetes/configmap.yaml");
}

#[test]
fn shipped_configs_pass_portico_check() {
    for rel in ["deploy/container/proxy.toml", "deploy/debian/proxy.toml"] {
        portico_check(&read(rel), rel);
    }
}

#[test]
fn probes_hit_the_public_admin_port() {
    let m = manifests();
    let (_, cfg) = configmap_config(&m);
    let public = addr(&cfg["admin"]["public_bind"], "admin.public_bind");
    assert!(
        public.ip().is_unspecified(),
        "the kubelet probes the pod IP: public_bind must not be loopback"
    );
    let admin = addr(&cfg["admin"]["bind"], "admin.bind");
    assert!(
        admin.ip().is_loopback(),
        "the full admin API stays pod-local"
    );
    let c = container(&m);
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(
            container_port(c, &get["port"]),
            public.port(),
            "{probe} port is admin.public_bind's"
        );
    }
    let ann = &get(&m, "Deployment", "portico")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(public.port().to_string().as_str())
    );
    let metrics = get(&m, "Service", "portico-metrics");
    let sm = get(&m, "ServiceMonitor", "portico");
    let sm_port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    let svc_port = metrics["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(sm_port))
        .expect("the ServiceMonitor's port is on the metrics Service");
    assert_eq!(container_port(c, &svc_port["targetPort"]), public.port());
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &metrics["metadata"]["labels"][k], v,
            "ServiceMonitor selector"
        );
    }
}

#[test]
fn container_port_matches_the_listener() {
    let m = manifests();
    let (_, cfg) = configmap_config(&m);
    let listeners = cfg["listener"].as_array().expect("[[listener]]");
    let c = container(&m);
    let http = container_port(c, &Value::from("http"));
    assert!(
        listeners.iter().any(|l| {
            let a = addr(&l["bind"], "listener.bind");
            a.port() == http && a.ip().is_unspecified()
        }),
        "containerPort http ({http}) is a listener bound on every address"
    );
    let svc = get(&m, "Service", "portico");
    for p in svc["spec"]["ports"].as_sequence().unwrap() {
        assert_eq!(container_port(c, &p["targetPort"]), http);
    }
    let docker = read("Dockerfile");
    assert!(
        docker.contains(&format!("{http}/tcp")),
        "the Dockerfile EXPOSEs {http}"
    );
}

#[test]
fn termination_outlasts_the_drain() {
    let m = manifests();
    let (_, cfg) = configmap_config(&m);
    let delay = duration(&cfg["server"]["shutdown_delay"], "server.shutdown_delay");
    let timeout = duration(
        &cfg["server"]["shutdown_timeout"],
        "server.shutdown_timeout",
    );
    let spec = &get(&m, "Deployment", "portico")["spec"]["template"]["spec"];
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    let c = container(&m);
    let pre_stop = Duration::from_secs(
        c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep seconds"),
    );
    assert!(
        pre_stop >= delay,
        "preStop {pre_stop:?} < shutdown_delay {delay:?}"
    );
    assert!(!delay.is_zero(), "a shutdown_delay lets endpoints catch up");
    assert!(
        grace > pre_stop + delay + timeout,
        "grace {grace:?} <= preStop {pre_stop:?} + delay {delay:?} + timeout {timeout:?}"
    );
}

#[test]
fn pod_is_locked_down_and_sized() {
    let m = manifests();
    let d = get(&m, "Deployment", "portico");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = container(&m);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(!c["resources"][kind][r].is_null(), "resources.{kind}.{r}");
        }
    }
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("config"))
        .expect("config volume mounted");
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = Path::new(mount["mountPath"].as_str().unwrap()).join("proxy.toml");
    assert_eq!(args, ["--config", config_path.to_str().unwrap()]);
}

#[test]
fn pdb_hpa_and_services_select_the_deployment() {
    let m = manifests();
    let d = get(&m, "Deployment", "portico");
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let selectors = [
        &d["spec"]["selector"]["matchLabels"],
        &get(&m, "PodDisruptionBudget", "portico")["spec"]["selector"]["matchLabels"],
        &get(&m, "Service", "portico")["spec"]["selector"],
        &get(&m, "Service", "portico-metrics")["spec"]["selector"],
    ];
    for sel in selectors {
        let sel = sel.as_mapping().expect("a selector");
        assert!(!sel.is_empty());
        for (k, v) in sel {
            assert_eq!(&labels[k], v, "selector {k:?}");
        }
    }
    let hpa = get(&m, "HorizontalPodAutoscaler", "portico");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("Deployment")
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("portico")
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["name"].as_str(),
        Some("cpu")
    );
    let kust: Value =
        serde_yaml_ng::from_str(&read("deploy/kubernetes/kustomization.yaml")).unwrap();
    for r in kust["resources"].as_sequence().unwrap() {
        let f = r.as_str().unwrap();
        assert!(root().join("deploy/kubernetes").join(f).is_file(), "{f}");
    }
}

/// A unit file as section -> key -> values (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn unit(rel: &str) -> Unit {
    let mut out: Unit = BTreeMap::new();
    let mut section = None;
    for (n, line) in read(rel).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}:{}: not key=value: {line}", n + 1));
        let s = section
            .clone()
            .unwrap_or_else(|| panic!("{rel}:{}: key outside a section", n + 1));
        out.entry(s)
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn one<'a>(u: &'a Unit, section: &str, key: &str) -> &'a str {
    let v = u
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("no {section}.{key}"));
    assert_eq!(v.len(), 1, "{section}.{key} once");
    &v[0]
}

#[test]
fn systemd_units_run_portico_the_right_way() {
    for (rel, ty) in [
        ("deploy/systemd/portico.service", "notify-reload"),
        ("deploy/systemd/legacy/portico.service", "notify"),
    ] {
        let u = unit(rel);
        assert_eq!(
            u.keys().map(String::as_str).collect::<Vec<_>>(),
            ["Install", "Service", "Unit"],
            "{rel}"
        );
        assert_eq!(one(&u, "Service", "Type"), ty, "{rel}");
        let start = one(&u, "Service", "ExecStart");
        assert!(
            start.starts_with("/usr/bin/portico --config /etc/portico/proxy.toml"),
            "{rel}: {start}"
        );
        assert_eq!(
            one(&u, "Service", "ExecStartPre"),
            "/usr/bin/portico check --config /etc/portico/proxy.toml",
            "{rel}"
        );
        let reload = u["Service"].get("ExecReload");
        match ty {
            // notify-reload sends ReloadSignal itself; an ExecReload would
            // replace that (and its wait for READY=1).
            "notify-reload" => assert!(reload.is_none(), "{rel}"),
            _ => assert_eq!(
                reload.map(|r| r.as_slice()),
                Some(["/bin/kill -HUP $MAINPID".to_string()].as_slice()),
                "{rel}"
            ),
        }
        assert!(one(&u, "Service", "WatchdogSec").ends_with('s'));
        assert_eq!(one(&u, "Service", "NoNewPrivileges"), "yes");
        assert_eq!(
            one(&u, "Service", "CapabilityBoundingSet"),
            "CAP_NET_BIND_SERVICE"
        );
        assert_eq!(
            one(&u, "Service", "AmbientCapabilities"),
            "CAP_NET_BIND_SERVICE"
        );
        assert_eq!(one(&u, "Service", "LogsDirectory"), "portico");
        let filters = &u["Service"]["SystemCallFilter"];
        assert!(filters.iter().any(|f| f == "@system-service"), "{rel}");
        // The stop timeout outlasts the default drain (shutdown_timeout 30 s).
        let stop = humantime::parse_duration(one(&u, "Service", "TimeoutStopSec")).unwrap();
        assert!(stop > Duration::from_secs(30), "{rel}");
    }
    let s = unit("deploy/systemd/portico.socket");
    assert_eq!(one(&s, "Socket", "Service"), "portico.service");
    let streams = &s["Socket"]["ListenStream"];
    assert!(!streams.is_empty());
    for l in streams {
        // Sockets are matched to listeners by exact address: an explicit
        // ip:port keeps the documented `bind` to write unambiguous.
        l.parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("ListenStream={l}: {e}"));
    }
    // A datagram socket is adopted for the QUIC side of the listener at
    // the same address: each must name a stream socket's address too.
    for d in s["Socket"].get("ListenDatagram").into_iter().flatten() {
        d.parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("ListenDatagram={d}: {e}"));
        assert!(
            streams.contains(d),
            "ListenDatagram={d} without its ListenStream"
        );
    }
}

#[test]
fn deb_recipe_ships_existing_files() {
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    assert_eq!(cargo["package"]["license"].as_str(), Some("Apache-2.0"));
    let license = read("LICENSE");
    assert!(
        license.contains("Apache License\n                           Version 2.0, January 2004")
    );
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
    let deb = &cargo["package"]["metadata"]["deb"];
    let script = read("deploy/debian/build-deb.sh");
    let mut dests = Vec::new();
    for a in deb["assets"].as_array().unwrap() {
        let src = a[0].as_str().unwrap();
        dests.push(a[1].as_str().unwrap().to_string());
        if src == "target/release/portico" {
            // The shipped binary is the PGO build: cargo-deb takes it from
            // target/dist/ under --profile dist.
            assert!(
                script.contains("scripts/build-pgo.sh"),
                "build-deb.sh builds {src}"
            );
            assert!(
                script.contains("--profile dist"),
                "build-deb.sh packages the dist build"
            );
            assert!(root().join("scripts/build-pgo.sh").is_file());
            continue;
        }
        match src.strip_prefix("target/assets/") {
            Some(generated) => assert!(script.contains(generated), "build-deb.sh makes {src}"),
            None => assert!(root().join(src).is_file(), "{src}"),
        }
    }
    assert!(dests.iter().any(|d| d == "usr/bin/"));
    assert!(dests
        .iter()
        .any(|d| d == "lib/systemd/system/portico.service"));
    assert!(dests.iter().any(|d| d == "etc/portico/proxy.toml"));
    assert!(dests.iter().any(|d| d.starts_with("usr/share/man/man1/")));
}

#[test]
fn dockerfile_runs_portico_as_non_root() {
    let d = read("Dockerfile");
    let last = d
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .expect("a multi-stage build");
    assert!(last.starts_with("gcr.io/distroless/cc"), "{last}");
    assert!(last.contains("\nUSER 65532:65532"));
    assert!(last.contains("ENTRYPOINT [\"/usr/bin/portico\"]"));
    assert!(last.contains("/etc/portico/proxy.toml"));
    assert!(
        d.contains("portico check --config"),
        "the build checks the image's config"
    );
    // The health check probes the image config's public admin bind.
    let hc = last
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .take(2)
        .collect::<String>();
    let cfg: toml::Value = toml::from_str(&read("deploy/container/proxy.toml")).unwrap();
    let public = cfg["admin"]["public_bind"].as_str().unwrap();
    let port = public.rsplit(':').next().unwrap();
    assert!(
        hc.contains(&format!("\"probe\", \"127.0.0.1:{port}\"")),
        "{hc}"
    );
}
