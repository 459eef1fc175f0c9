//! deploy/k8s: the Kustomize base renders, every object validates against the Kubernetes schemas
//! (deploy/k8s/validate.py: `kubernetes-validate`, strict, offline), and the manifests agree with the
//! binaries they run: image names and tags, every environment variable a name the binary reads (and
//! `print-config` reports it read), ports, probe paths answering 200 on real nodes, drain and
//! termination times, the iofs path rule, the NetworkPolicy, and certificates made as
//! deploy/README.md says letting an LB that dials a runner by IP verify it against
//! `FERROFN_TLS_SERVER_NAME`. No cluster runs here: what a cluster would add is listed in
//! deploy/README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use ferrofn_tests::images::workspace_root;
use ferrofn_tests::lb_proc::{LbBinary, lb_binary, request};
use ferrofn_tests::runner_proc::{RunnerProc, ensure_runner_binary, unique_name};

/// The rendered base, from `deploy/k8s/validate.py --json`.
struct Rendered {
    objects: Vec<Value>,
    kustomization: Value,
    versions: Vec<String>,
    validated: usize,
    kubectl: String,
}

fn render() -> Rendered {
    let script = workspace_root().join("deploy/k8s/validate.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--json")
        .output()
        .unwrap_or_else(|e| panic!("running python3 {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy/k8s/validate.py failed (install its dependency with `python3 -m pip install \
         kubernetes-validate==1.37.0`):\n{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("validate.py --json prints JSON");
    Rendered {
        objects: v["objects"].as_array().expect("objects").clone(),
        kustomization: v["kustomization"].clone(),
        versions: v["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect(),
        validated: v["validated"].as_array().expect("validated").len(),
        kubectl: v["kubectl_kustomize"].as_str().unwrap_or("").to_owned(),
    }
}

impl Rendered {
    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered base"))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }
}

fn lb(r: &Rendered) -> &Value {
    r.get("Deployment", "ferrofn-lb")
}

fn runners(r: &Rendered) -> &Value {
    r.get("DaemonSet", "ferrofn-runner")
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// The workload's one container.
fn container(workload: &Value) -> &Value {
    let cs = pod_spec(workload)["containers"].as_array().expect("containers");
    assert_eq!(cs.len(), 1, "one container per node pod");
    &cs[0]
}

/// How an environment variable gets its value.
#[derive(Debug, Clone, PartialEq)]
enum EnvValue {
    Literal(String),
    Secret { name: String, key: String },
    Field(String),
}

fn env_of(c: &Value) -> Vec<(String, EnvValue)> {
    c["env"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_owned();
            let value = if let Some(v) = e.get("value") {
                EnvValue::Literal(v.as_str().expect("env values are strings").to_owned())
            } else if let Some(s) = e["valueFrom"].get("secretKeyRef") {
                EnvValue::Secret {
                    name: s["name"].as_str().unwrap().to_owned(),
                    key: s["key"].as_str().unwrap().to_owned(),
                }
            } else if let Some(f) = e["valueFrom"].get("fieldRef") {
                EnvValue::Field(f["fieldPath"].as_str().unwrap().to_owned())
            } else {
                panic!("{name}: a value source this test does not know: {e}")
            };
            (name, value)
        })
        .collect()
}

fn literal(c: &Value, name: &str) -> String {
    match env_of(c).into_iter().find(|(n, _)| n == name) {
        Some((_, EnvValue::Literal(v))) => v,
        other => panic!("{name}: a literal value expected, found {other:?}"),
    }
}

/// A stand-in for a value the cluster supplies (Secrets, the downward API), valid for the
/// setting; `print-config` must accept the manifest with it.
fn stand_in(v: &EnvValue) -> String {
    match v {
        EnvValue::Literal(s) => s.clone(),
        EnvValue::Secret { name, key } => match (name.as_str(), key.as_str()) {
            ("ferrofn-db", "url") => "postgres://ferrofn:pw@db.example:5432/ferrofn?sslmode=disable".into(),
            ("ferrofn-api-token", "token") => "0123456789abcdef".into(),
            other => panic!("no stand-in value for Secret key {other:?}: add one here"),
        },
        EnvValue::Field(path) if path == "spec.nodeName" => "node-1".into(),
        EnvValue::Field(path) => panic!("no stand-in value for fieldRef {path}"),
    }
}

/// `print-config`'s output: "section.key" -> (value as written, source).
fn print_config(bin: &Path, env: &[(String, String)]) -> BTreeMap<String, (String, String)> {
    let out = std::process::Command::new(bin)
        .arg("print-config")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} print-config refuses the manifest's environment {env:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut section = String::new();
    let mut settings = BTreeMap::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{s}.");
        } else if let Some((k, rest)) = line.split_once(" = ") {
            let (value, source) = rest.rsplit_once("  # ").unwrap_or((rest, ""));
            settings.insert(format!("{section}{k}"), (value.to_owned(), source.to_owned()));
        }
    }
    assert!(!settings.is_empty(), "print-config printed nothing: {text}");
    settings
}

fn setting(s: &BTreeMap<String, (String, String)>, key: &str) -> String {
    s.get(key)
        .unwrap_or_else(|| panic!("print-config has no {key}"))
        .0
        .trim_matches('"')
        .to_owned()
}

/// The container's environment with stand-ins, as the binary would see it.
fn effective_env(c: &Value) -> Vec<(String, String)> {
    env_of(c).iter().map(|(n, v)| (n.clone(), stand_in(v))).collect()
}

async fn binaries() -> (PathBuf, PathBuf) {
    (lb_binary().await.unwrap(), ensure_runner_binary().await.unwrap())
}

/// The container port named `port` (a name or a number) refers to.
fn container_port(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port name or number");
    c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("matchLabels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels(workload: &Value) -> &Value {
    &workload["spec"]["template"]["metadata"]["labels"]
}

#[test]
fn base_renders_and_every_object_validates_against_the_kubernetes_schemas() {
    let r = render();
    assert!(!r.versions.is_empty());
    assert_eq!(
        r.validated,
        r.objects.len() * r.versions.len(),
        "every object validated against every version"
    );
    eprintln!(
        "{} objects validated (strict) against Kubernetes {:?}; kubectl kustomize: {}",
        r.objects.len(),
        r.versions,
        r.kubectl
    );
    // Whatever validate.py decided about kubectl, it never reports a difference and succeeds.
    assert_ne!(r.kubectl, "different");
    let kinds: BTreeSet<(String, String)> = r
        .objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("Deployment", "ferrofn-lb"),
        ("Service", "ferrofn-lb"),
        ("PodDisruptionBudget", "ferrofn-lb"),
        ("DaemonSet", "ferrofn-runner"),
        ("Service", "ferrofn-runner"),
    ] {
        assert!(
            kinds.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} missing: {kinds:?}"
        );
    }
    assert_eq!(lb(&r)["spec"]["replicas"], 2);
    let ns = r.kustomization["namespace"].as_str().expect("namespace");
    for o in &r.objects {
        assert_eq!(o["metadata"]["namespace"], ns, "{}", o["metadata"]["name"]);
    }
}

#[tokio::test]
async fn images_are_the_node_images_tagged_with_the_binaries_version() {
    let r = render();
    let (lb_bin, runner_bin) = binaries().await;
    let images_sh = std::fs::read_to_string(workspace_root().join("deploy/images.sh")).unwrap();
    for (workload, bin, image) in [
        (lb(&r), &lb_bin, "ferrofn/lb"),
        (runners(&r), &runner_bin, "ferrofn/runner"),
    ] {
        let out = std::process::Command::new(bin).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&out.stdout);
        let version = version.split_whitespace().nth(1).expect("<name> <version>");
        assert_eq!(container(workload)["image"], format!("{image}:{version}"));
        assert!(
            images_sh.contains(&format!("\"{image}:$TAG\"")),
            "deploy/images.sh builds {image}"
        );
        // The image's ENTRYPOINT is the binary, which serves when given no subcommand.
        assert!(
            container(workload).get("command").is_none(),
            "the image's ENTRYPOINT runs the node"
        );
    }
}

#[tokio::test]
async fn every_env_name_is_one_the_binary_reads_and_print_config_accepts_the_manifest() {
    let r = render();
    let (lb_bin, runner_bin) = binaries().await;
    for (workload, bin, names) in [
        (lb(&r), &lb_bin, &ferrofn_lb::config::ENV_NAMES),
        (runners(&r), &runner_bin, &ferrofn_runner::config::ENV_NAMES),
    ] {
        let c = container(workload);
        let env = effective_env(c);
        assert!(!env.is_empty());
        let current: BTreeSet<&str> = names.current.iter().map(|(n, _)| *n).collect();
        for (name, _) in &env {
            // Unknown names are ignored by the binaries, so a typo would go unnoticed: every name
            // must be a current one (not a deprecated one, which logs a warning).
            assert!(
                current.contains(name.as_str()),
                "{name} ({}) is not a setting of {}: {current:?}",
                workload["metadata"]["name"],
                bin.display()
            );
        }
        let settings = print_config(bin, &env);
        for (name, _) in &env {
            let want = format!("environment variable {name}");
            assert!(
                settings.values().any(|(_, source)| *source == want),
                "print-config of {} does not report {name} as a source: {settings:?}",
                bin.display()
            );
        }
    }
}

#[tokio::test]
async fn ports_probes_services_and_drain_times_match_the_binaries() {
    let r = render();
    let (lb_bin, runner_bin) = binaries().await;

    // LB: the HTTP port, its probes, the Service.
    let lb_c = container(lb(&r));
    let lb_settings = print_config(&lb_bin, &effective_env(lb_c));
    let lb_port: u64 = setting(&lb_settings, "port").parse().unwrap();
    assert_eq!(container_port(lb_c, &Value::from("http")), lb_port);
    for (probe, path) in [
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
        ("startupProbe", "/health/live"),
    ] {
        let get = &lb_c[probe]["httpGet"];
        assert_eq!(get["path"], path, "LB {probe}");
        assert_eq!(container_port(lb_c, &get["port"]), lb_port, "LB {probe} port");
    }
    let lb_svc = r.get("Service", "ferrofn-lb");
    assert!(labels_match(&lb_svc["spec"]["selector"], pod_labels(lb(&r))));
    assert_eq!(
        container_port(lb_c, &lb_svc["spec"]["ports"][0]["targetPort"]),
        lb_port
    );
    let pdb = r.get("PodDisruptionBudget", "ferrofn-lb");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels(lb(&r))
    ));
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() < lb(&r)["spec"]["replicas"].as_u64().unwrap());

    // Runner: gRPC and HTTP ports, readiness on the HTTP port.
    let rc = container(runners(&r));
    let rs = print_config(&runner_bin, &effective_env(rc));
    let grpc_port: u64 = setting(&rs, "grpc_port").parse().unwrap();
    let http_port: u64 = setting(&rs, "port").parse().unwrap();
    assert_eq!(container_port(rc, &Value::from("grpc")), grpc_port);
    assert_eq!(container_port(rc, &Value::from("http")), http_port);
    for (probe, path) in [
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
        ("startupProbe", "/health/live"),
    ] {
        let get = &rc[probe]["httpGet"];
        assert_eq!(get["path"], path, "runner {probe}");
        assert_eq!(container_port(rc, &get["port"]), http_port, "runner {probe} port");
    }

    // The LB finds the runners through the headless Service, on their gRPC port, and verifies them
    // against the name their certificate carries.
    let headless = r.get("Service", "ferrofn-runner");
    assert_eq!(headless["spec"]["clusterIP"], "None", "headless");
    assert!(labels_match(
        &headless["spec"]["selector"],
        pod_labels(runners(&r))
    ));
    assert!(
        !headless["spec"]["publishNotReadyAddresses"]
            .as_bool()
            .unwrap_or(false),
        "a draining (unready) runner must leave the DNS answer"
    );
    assert_eq!(
        container_port(rc, &headless["spec"]["ports"][0]["targetPort"]),
        grpc_port
    );
    let addresses = setting(&lb_settings, "runner_addresses");
    assert_eq!(
        addresses,
        format!(
            "[\"{}:{}\"]",
            headless["metadata"]["name"].as_str().unwrap(),
            grpc_port
        )
    );
    assert_eq!(setting(&lb_settings, "plaintext"), "false");
    assert_eq!(setting(&rs, "plaintext"), "false");
    assert!(
        !setting(&lb_settings, "tls.server_name").is_empty(),
        "the LB dials IPs: set the name"
    );

    // NetworkPolicy: the runners' gRPC port admits LB pods and nothing else.
    let policies: Vec<&Value> = r
        .of_kind("NetworkPolicy")
        .into_iter()
        .filter(|p| labels_match(&p["spec"]["podSelector"]["matchLabels"], pod_labels(runners(&r))))
        .collect();
    assert_eq!(policies.len(), 1, "one policy selects the runners");
    let policy = policies[0];
    assert!(
        policy["spec"]["policyTypes"]
            .as_array()
            .unwrap()
            .contains(&Value::from("Ingress"))
    );
    let mut admits_lb = false;
    for rule in policy["spec"]["ingress"].as_array().expect("ingress rules") {
        let ports = rule["ports"].as_array().expect("every rule names its ports");
        let opens_grpc = ports.iter().any(|p| container_port(rc, &p["port"]) == grpc_port);
        if !opens_grpc {
            continue;
        }
        let from = rule["from"].as_array().expect("the gRPC rule names its peers");
        for peer in from {
            assert!(
                peer.get("ipBlock").is_none() && peer.get("namespaceSelector").is_none(),
                "gRPC open beyond the LB pods: {peer}"
            );
            assert!(
                labels_match(&peer["podSelector"]["matchLabels"], pod_labels(lb(&r)))
                    && !labels_match(&peer["podSelector"]["matchLabels"], pod_labels(runners(&r))),
                "gRPC open to pods that are not LBs: {peer}"
            );
        }
        admits_lb = true;
    }
    assert!(admits_lb, "no rule admits the LBs to the runners' gRPC port");

    // Termination: the runner drains for FERROFN_DRAIN_GRACE_MSECS, then removes its containers.
    let drain_ms: u64 = setting(&rs, "drain_grace_msecs").parse().unwrap();
    let runner_grace = pod_spec(runners(&r))["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        runner_grace * 1000 >= drain_ms + 10_000,
        "runner grace {runner_grace} s leaves no margin after a {drain_ms} ms drain"
    );
    // The LB finishes its requests, then waits DRAIN_LIMIT for detached calls (lb/src/main.rs).
    let main = std::fs::read_to_string(workspace_root().join("lb/src/main.rs")).unwrap();
    let limit_secs: u64 = main
        .lines()
        .find(|l| l.contains("const DRAIN_LIMIT"))
        .and_then(|l| l.split("from_secs(").nth(1))
        .and_then(|l| l.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("DRAIN_LIMIT in lb/src/main.rs");
    let pre_stop = lb_c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let lb_grace = pod_spec(lb(&r))["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        lb_grace > pre_stop + limit_secs,
        "LB grace {lb_grace} s < preStop {pre_stop} s + detached drain {limit_secs} s"
    );
}

#[tokio::test]
async fn runner_pod_mounts_the_iofs_dir_at_the_same_path_and_the_docker_socket() {
    let r = render();
    let (_, runner_bin) = binaries().await;
    let rc = container(runners(&r));
    let rs = print_config(&runner_bin, &effective_env(rc));
    let iofs = setting(&rs, "iofs_path");
    assert!(iofs.starts_with('/'), "iofs_path {iofs:?} must be absolute");
    assert_eq!(setting(&rs, "iofs_docker_path"), "", "same path inside and out");
    let volumes = pod_spec(runners(&r))["volumes"].as_array().unwrap();
    let host_path_of = |mount_path: &str| -> String {
        let m = rc["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        v["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{mount_path} is not a hostPath: {v}"))
            .to_owned()
    };
    assert_eq!(
        host_path_of(&iofs),
        iofs,
        "the engine resolves the iofs path on the node"
    );
    assert_eq!(host_path_of("/var/run/docker.sock"), "/var/run/docker.sock");
}

#[test]
fn pods_run_as_the_images_non_root_user_with_nothing_extra() {
    let r = render();
    for (workload, dockerfile) in [(lb(&r), "lb.Dockerfile"), (runners(&r), "runner.Dockerfile")] {
        let text = std::fs::read_to_string(workspace_root().join("deploy/docker").join(dockerfile)).unwrap();
        let user = text
            .lines()
            .find_map(|l| l.strip_prefix("USER "))
            .expect("USER in the Dockerfile");
        let uid: u64 = user.split(':').next().unwrap().parse().unwrap();
        let pod = pod_spec(workload);
        let name = workload["metadata"]["name"].as_str().unwrap();
        assert_eq!(pod["securityContext"]["runAsUser"], uid, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert_eq!(
            pod["enableServiceLinks"], false,
            "{name}: no service-link variables"
        );
        let sc = &container(workload)["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        assert!(sc.get("privileged").is_none_or(|p| p == false), "{name}");
        let res = &container(workload)["resources"];
        for k in ["requests", "limits"] {
            assert!(
                res[k]["cpu"].is_string() && res[k]["memory"].is_string(),
                "{name} {k}"
            );
        }
    }
    // The runner reaches the socket through the socket's group.
    let groups = &pod_spec(runners(&r))["securityContext"]["supplementalGroups"];
    assert!(
        !groups.as_array().unwrap().is_empty(),
        "the docker socket's group"
    );
}

/// The Secrets the manifests use, with the keys they need: (secret, keys named by secretKeyRef).
fn secrets_used(r: &Rendered) -> BTreeMap<String, BTreeSet<String>> {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for w in [lb(r), runners(r)] {
        for (_, v) in env_of(container(w)) {
            if let EnvValue::Secret { name, key } = v {
                used.entry(name).or_default().insert(key);
            }
        }
        for v in pod_spec(w)["volumes"].as_array().unwrap() {
            if let Some(s) = v["secret"]["secretName"].as_str() {
                used.entry(s.to_owned()).or_default();
            }
        }
    }
    used
}

/// `kubectl ... create secret generic NAME <args>` lines of deploy/README.md: NAME -> args.
fn documented_secrets() -> BTreeMap<String, Vec<String>> {
    let readme = std::fs::read_to_string(workspace_root().join("deploy/README.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in readme.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words
            .windows(3)
            .position(|w| w == ["create", "secret", "generic"])
        {
            let name = words[i + 3].to_owned();
            out.insert(name, words[i + 4..].iter().map(|s| s.to_string()).collect());
        }
    }
    out
}

#[test]
fn every_secret_the_manifests_use_is_made_in_deploy_readme() {
    let r = render();
    let documented = documented_secrets();
    for (secret, keys) in secrets_used(&r) {
        let args = documented
            .get(&secret)
            .unwrap_or_else(|| panic!("deploy/README.md does not say how to make Secret {secret}"));
        for key in keys {
            assert!(
                args.iter()
                    .any(|a| a.starts_with(&format!("--from-literal={key}="))
                        || a.starts_with(&format!("--from-file={key}="))),
                "Secret {secret}: deploy/README.md does not give key {key}: {args:?}"
            );
        }
    }
}

/// The `ferrofn-lb certs ...` command of deploy/README.md's Kubernetes section, as arguments.
fn documented_certs_command() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("deploy/README.md")).unwrap();
    let k8s = readme
        .split("## Kubernetes")
        .nth(1)
        .expect("a Kubernetes section");
    let line = k8s
        .lines()
        .find(|l| l.trim_start().starts_with("ferrofn-lb certs "))
        .expect("a `ferrofn-lb certs` line in the Kubernetes section");
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

async fn get_status(url: &str) -> (u16, String) {
    match request("GET", url, &BTreeMap::new(), "").await {
        Ok(resp) => (resp.status, resp.text()),
        Err(e) => (0, format!("{e:#}")),
    }
}

/// Polls `url` until it answers `want` or `within` passes; the last answer.
async fn wait_for(url: &str, want: u16, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let got = get_status(url).await;
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Maps a path in a pod (`/certs/x.pem`) to where the documented Secret's files are here.
fn mapped(
    c: &Value,
    pod: &Value,
    documented: &BTreeMap<String, Vec<String>>,
    out: &Path,
    name: &str,
) -> PathBuf {
    let path = literal(c, name);
    let (mount, file) = path.rsplit_once('/').expect("absolute path");
    let m = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == mount)
        .unwrap_or_else(|| panic!("{name}={path}: nothing mounted at {mount}"));
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap();
    let secret = vol["secret"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: {mount} is not a Secret"));
    // `--from-file=./certs/<dir>/`: the Secret's keys are the files of that dir.
    let args = &documented[secret];
    let dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--from-file="))
        .unwrap_or_else(|| panic!("Secret {secret}: no --from-file in deploy/README.md"));
    let dir = dir
        .strip_prefix("./certs/")
        .expect("made from ./certs/<dir>/ as `certs` wrote it");
    let file_path = out.join(dir).join(file);
    assert!(
        file_path.is_file(),
        "{name}={path}: the Secret {secret} made from ./certs/{dir} has no key {file}"
    );
    file_path
}

#[tokio::test]
async fn certificates_made_as_documented_let_the_lb_verify_a_runner_it_dials_by_ip() {
    let r = render();
    let documented = documented_secrets();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");

    // `ferrofn-lb certs ...` exactly as documented, writing into a temp dir instead of ./certs.
    let args: Vec<String> = documented_certs_command()
        .into_iter()
        .map(|a| {
            if a == "./certs" {
                out.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let lb_bin = lb_binary().await.unwrap();
    let made = std::process::Command::new(&lb_bin).args(&args).output().unwrap();
    assert!(
        made.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let rc = container(runners(&r));
    let lbc = container(lb(&r));
    let tls = ["FERROFN_TLS_CA", "FERROFN_TLS_CERT", "FERROFN_TLS_KEY"];
    let runner_env: Vec<(&str, String)> = tls
        .iter()
        .map(|n| {
            (
                *n,
                mapped(rc, pod_spec(runners(&r)), &documented, &out, n)
                    .display()
                    .to_string(),
            )
        })
        .collect();
    let runner_env: Vec<(&str, &str)> = runner_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let runner = RunnerProc::start_tls(&unique_name("k8s"), &runner_env, &[])
        .await
        .unwrap();

    // The runner's probe paths on its HTTP port.
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let path = rc[probe]["httpGet"]["path"].as_str().unwrap();
        let url = format!("http://{}{}", runner.http_addr, path);
        let (status, body) = wait_for(&url, 200, Duration::from_secs(15)).await;
        assert_eq!(status, 200, "runner {probe} GET {path}: {body}");
    }

    // An LB with the manifest's TLS settings dialling the runner's IP, as DNS discovery dials pod
    // IPs: it must verify the runner against FERROFN_TLS_SERVER_NAME.
    let server_name = literal(lbc, "FERROFN_TLS_SERVER_NAME");
    let lb_files: Vec<(&str, String)> = tls
        .iter()
        .map(|n| {
            (
                *n,
                mapped(lbc, pod_spec(lb(&r)), &documented, &out, n)
                    .display()
                    .to_string(),
            )
        })
        .collect();
    let db = format!("sqlite3://{}", dir.path().join("fn.db").display());
    let runner_addr = runner.grpc_addr.to_string();
    let start_lb = |name: String| {
        let mut env: Vec<(&str, String)> = lb_files.clone();
        env.push(("FERROFN_TLS_SERVER_NAME", name));
        env.push(("FN_RUNNER_ADDRESSES", runner_addr.clone()));
        env.push(("FN_DB_URL", db.clone()));
        env.push(("FERROFN_API_TOKEN", "0123456789abcdef".into()));
        env.push(("FERROFN_HEALTH_INTERVAL_MSECS", "200".into()));
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            LbBinary::start(&[], &env).await.unwrap()
        }
    };
    let good = start_lb(server_name.clone()).await;
    for probe in ["livenessProbe", "startupProbe", "readinessProbe"] {
        let path = lbc[probe]["httpGet"]["path"].as_str().unwrap();
        let (status, body) = wait_for(&good.url(path), 200, Duration::from_secs(15)).await;
        assert_eq!(
            status,
            200,
            "LB {probe} GET {path}: {body}; LB log: {}",
            good.stderr.lock().unwrap()
        );
    }
    drop(good);

    // The check can fail: the same LB expecting another name never sees the runner up.
    let wrong = start_lb(format!("not-{server_name}")).await;
    let path = lbc["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = get_status(&wrong.url(path)).await;
    assert_eq!(status, 503, "readiness with a name the certificate lacks: {body}");
    let ready: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(ready["runners_up"], 0, "{body}");
    assert_eq!(ready["runners_configured"], 1, "{body}");
}
