//! deploy/kubernetes/: kubernetes-validate and kustomize accept it, and its objects agree with
//! the binaries (probes, drain, KEDA, ServiceMonitors, the ingest, the status StatefulSet, the
//! scheduler).

use super::*;

pub(super) const K8S_DIR: &str = "deploy/kubernetes";

/// The pod's grace period outlasts the time `container` may take to stop, the duration in
/// its environment variable `timeout`.
fn outlives(pod: &Yaml, container: &Yaml, timeout: &str) {
    let needed = seconds(str_of(&env(container, timeout)["value"]));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    assert!(
        needed > 0 && grace > i64::try_from(needed).unwrap(),
        "grace {grace}s, {timeout} {needed}s"
    );
}

/// `container` takes its broker URL from the `warren-amqp` Secret, has CPU and memory
/// requests and limits, and its pod runs as a user other than root.
fn runs_bounded_as_non_root_with_the_secret(pod: &Yaml, container: &Yaml) {
    let secret = &env(container, "AMQP_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (str_of(&secret["name"]), str_of(&secret["key"])),
        ("warren-amqp", "url")
    );
    for bound in ["requests", "limits"] {
        let resources = &container["resources"][bound];
        assert!(
            !resources["cpu"].is_badvalue() && !resources["memory"].is_badvalue(),
            "{bound}"
        );
    }
    assert_eq!(
        pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
}

/// The manifests of deploy/kubernetes (every *.yaml but kustomization.yaml), by file name.
fn manifest_files() -> BTreeSet<String> {
    std::fs::read_dir(repo().join(K8S_DIR))
        .expect("deploy/kubernetes exists")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect()
}

pub(super) fn k8s_objects() -> Vec<Yaml> {
    manifest_files()
        .iter()
        .flat_map(|file| load(&format!("{K8S_DIR}/{file}")))
        .collect()
}

pub(super) fn object<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|o| str_of(&o["kind"]) == kind && str_of(&o["metadata"]["name"]) == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {K8S_DIR}"))
}

pub(super) fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    list(&deployment["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| str_of(&c["name"]) == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

pub(super) fn env<'a>(container: &'a Yaml, name: &str) -> &'a Yaml {
    list(&container["env"])
        .iter()
        .find(|e| str_of(&e["name"]) == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// (path, container port number, port name) an HTTP probe hits.
pub(super) fn probe(container: &Yaml, kind: &str) -> (String, i64, String) {
    let get = &container[kind]["httpGet"];
    let port = list(&container["ports"])
        .iter()
        .find(|p| get["port"] == p["name"] || get["port"] == p["containerPort"])
        .unwrap_or_else(|| panic!("{kind} port {:?} is not a container port", get["port"]));
    (
        str_of(&get["path"]).to_owned(),
        port["containerPort"].as_i64().unwrap_or_default(),
        str_of(&port["name"]).to_owned(),
    )
}

/// A virtualenv under target/ with kubernetes-validate and kubectl, made on first use.
fn k8s_tools() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let venv = target.join("venv-deploy");
    let marker = venv.join(".warren-installed");
    let wanted = K8S_TOOLS.join(" ");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Some(venv.join("bin"));
    }
    let Some(python) = find_in_path("python3") else {
        skip_or_fail(
            K8S,
            "python3 is not installed: cannot install kubernetes-validate",
        );
        return None;
    };
    let steps: [Vec<&std::ffi::OsStr>; 2] = [
        vec!["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
        [
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
        .iter()
        .map(|s| s.as_ref())
        .chain(K8S_TOOLS.iter().map(|s| s.as_ref()))
        .collect(),
    ];
    for (i, args) in steps.iter().enumerate() {
        let program = if i == 0 {
            python.clone()
        } else {
            venv.join("bin/python")
        };
        let output = Command::new(&program).args(args).output();
        match output {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                skip_or_fail(
                    K8S,
                    &format!("cannot install {wanted} into {}: {why}", venv.display()),
                );
                return None;
            }
            Err(e) => {
                skip_or_fail(K8S, &format!("cannot run {}: {e}", program.display()));
                return None;
            }
        }
    }
    std::fs::write(&marker, &wanted).expect("target/ is writable");
    Some(venv.join("bin"))
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate_and_kustomize() {
    let kustomization = &load(&format!("{K8S_DIR}/kustomization.yaml"))[0];
    let resources: BTreeSet<String> = list(&kustomization["resources"])
        .iter()
        .map(|r| str_of(r).to_owned())
        .collect();
    assert_eq!(
        resources,
        manifest_files(),
        "kustomization.yaml lists every manifest"
    );

    let Some(bin) = k8s_tools() else {
        return;
    };
    let files: Vec<PathBuf> = manifest_files()
        .iter()
        .map(|f| repo().join(K8S_DIR).join(f))
        .collect();
    let report = run_ok(
        Command::new(bin.join("kubernetes-validate"))
            .arg("--strict")
            .args(&files),
    );
    assert!(!report.contains("ERROR"), "{report}");

    // What `kubectl apply -k` would send, validated too.
    let built = run_ok(
        Command::new(bin.join("kubectl"))
            .args(["kustomize"])
            .arg(repo().join(K8S_DIR)),
    );
    let out = std::env::temp_dir().join(format!("warren-kustomized-{}.yaml", std::process::id()));
    std::fs::write(&out, &built).expect("the temporary directory is writable");
    let report = run_ok(
        Command::new(bin.join("kubernetes-validate"))
            .arg("--strict")
            .arg(&out),
    );
    let _ = std::fs::remove_file(&out);
    assert!(!report.contains("ERROR"), "{report}");
    let kinds: BTreeSet<String> = parse(&built, "kustomize output")
        .iter()
        .map(|o| str_of(&o["kind"]).to_owned())
        .collect();
    let expected = [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "Service",
        "ServiceMonitor",
        "StatefulSet",
        "TriggerAuthentication",
    ];
    assert_eq!(
        kinds,
        expected.map(String::from).into(),
        "kinds kustomize builds"
    );

    // The scheduler mounts the ConfigMap made from schedule.toml, under its generated name.
    let built = parse(&built, "kustomize output");
    let deployment = object(&built, "Deployment", "warren-scheduler");
    let volumes = list(&deployment["spec"]["template"]["spec"]["volumes"]);
    let name = str_of(&volumes[0]["configMap"]["name"]);
    assert!(
        name.starts_with("warren-schedule-"),
        "{name}: the generated name"
    );
    let config_map = object(&built, "ConfigMap", name);
    assert_eq!(
        str_of(&config_map["data"]["schedule.toml"]),
        read(K8S_SCHEDULE)
    );
}

#[test]
fn worker_deployment_probes_its_admin_port_and_outlives_its_drain() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-worker");
    let pod = &deployment["spec"]["template"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    let worker = container(deployment, "worker");
    let admin = list(&worker["ports"])
        .iter()
        .find(|p| str_of(&p["name"]) == "admin")
        .expect("a port named admin");
    assert_eq!(admin["containerPort"].as_i64(), Some(9090));
    assert_eq!(
        str_of(&env(worker, "WARREN_ADMIN_ADDR")["value"]),
        "0.0.0.0:9090"
    );
    assert_eq!(
        probe(worker, "livenessProbe"),
        ("/healthz".into(), 9090, "admin".into())
    );
    assert_eq!(
        probe(worker, "readinessProbe"),
        ("/readyz".into(), 9090, "admin".into())
    );

    outlives(pod, worker, "WARREN_SHUTDOWN_TIMEOUT");
    runs_bounded_as_non_root_with_the_secret(pod, worker);
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(str_of(&annotations["prometheus.io/port"]), "9090");
    assert_eq!(str_of(&annotations["prometheus.io/path"]), "/metrics");

    let pdb = object(&objects, "PodDisruptionBudget", "warren-worker");
    assert!(selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
}

#[test]
fn keda_scales_the_worker_deployment_on_its_queue() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-worker");
    let scaled = object(&objects, "ScaledObject", "warren-worker");
    assert_eq!(str_of(&scaled["apiVersion"]), "keda.sh/v1alpha1");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(
        str_of(&target["name"]),
        str_of(&deployment["metadata"]["name"])
    );
    assert!(matches!(str_of(&target["kind"]), "" | "Deployment"));

    let queues = str_of(&env(container(deployment, "worker"), "WARREN_QUEUES")["value"]).to_owned();
    let triggers = list(&scaled["spec"]["triggers"]);
    let rabbitmq: Vec<&Yaml> = triggers
        .iter()
        .filter(|t| str_of(&t["type"]) == "rabbitmq")
        .collect();
    assert!(!rabbitmq.is_empty(), "a rabbitmq trigger");
    for trigger in rabbitmq {
        let meta = &trigger["metadata"];
        let queue = str_of(&meta["queueName"]);
        assert!(
            queues.split(',').any(|q| q == queue),
            "{queue} is not among the worker's queues {queues}"
        );
        assert_eq!(str_of(&meta["mode"]), "QueueLength");
        assert_eq!(str_of(&meta["protocol"]), "amqp");
        assert!(str_of(&meta["value"]).parse::<f64>().is_ok_and(|v| v > 0.0));
        let auth_name = str_of(&trigger["authenticationRef"]["name"]);
        let auth = object(&objects, "TriggerAuthentication", auth_name);
        let host = list(&auth["spec"]["secretTargetRef"])
            .iter()
            .find(|r| str_of(&r["parameter"]) == "host")
            .expect("the TriggerAuthentication sets host");
        let secret = &env(container(deployment, "worker"), "AMQP_URL")["valueFrom"]["secretKeyRef"];
        assert_eq!(
            host["name"], secret["name"],
            "KEDA reads the workers' Secret"
        );
        assert_eq!(host["key"], secret["key"]);
    }
}

#[test]
fn servicemonitors_scrape_every_process_on_its_admin_or_http_port() {
    let objects = k8s_objects();
    for (name, container_name, port_name, port) in [
        ("warren-worker", "worker", "admin", 9090),
        ("warren-producer", "producer", "http", 8080),
        ("warren-scheduler", "scheduler", "admin", 9092),
        ("warren-status", "status", "http", 8080),
    ] {
        let monitor = object(&objects, "ServiceMonitor", name);
        assert_eq!(str_of(&monitor["apiVersion"]), "monitoring.coreos.com/v1");
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(str_of(&endpoint["port"]), port_name, "{name}");
        assert_eq!(str_of(&endpoint["path"]), "/metrics", "{name}");

        let service = object(&objects, "Service", name);
        assert!(
            selects(
                &monitor["spec"]["selector"]["matchLabels"],
                &service["metadata"]["labels"]
            ),
            "ServiceMonitor {name} does not select Service {name}"
        );
        let service_port = list(&service["spec"]["ports"])
            .iter()
            .find(|p| str_of(&p["name"]) == port_name)
            .unwrap_or_else(|| panic!("Service {name} has no port {port_name}"));
        assert_eq!(service_port["port"].as_i64(), Some(port));
        let kind = if name == "warren-status" {
            "StatefulSet"
        } else {
            "Deployment"
        };
        let deployment = object(&objects, kind, name);
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&service["spec"]["selector"], pod_labels),
            "Service {name} selects its pods"
        );
        let target = list(&container(deployment, container_name)["ports"])
            .iter()
            .find(|p| str_of(&p["name"]) == port_name)
            .unwrap_or_else(|| panic!("{name} has no container port {port_name}"));
        assert_eq!(target["containerPort"].as_i64(), Some(port));
    }
}

#[test]
fn producer_deployment_runs_the_http_ingest_with_probes() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-producer");
    let producer = container(deployment, "producer");
    let argv: Vec<&str> = list(&producer["command"])
        .iter()
        .chain(list(&producer["args"]))
        .map(str_of)
        .collect();
    assert_eq!(
        argv,
        ["warren-producer", "serve", "--listen", "0.0.0.0:8080"]
    );
    assert_eq!(
        probe(producer, "livenessProbe"),
        ("/healthz".into(), 8080, "http".into())
    );
    assert_eq!(
        probe(producer, "readinessProbe"),
        ("/readyz".into(), 8080, "http".into())
    );
    let secret = &env(producer, "AMQP_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(str_of(&secret["name"]), "warren-amqp");
}

/// Each replica of the status service keeps its index on a volume of its own (a claim per
/// pod), follows the stream the workers record into, and is probed like the ingest; only one
/// ServiceMonitor's Service selects its pods, so each is scraped once.
#[test]
fn status_statefulset_keeps_an_index_per_replica_on_its_own_volume() {
    let objects = k8s_objects();
    let set = object(&objects, "StatefulSet", "warren-status");
    let status = container(set, "status");
    let argv: Vec<&str> = list(&status["command"])
        .iter()
        .chain(list(&status["args"]))
        .map(str_of)
        .collect();
    let flag = |name: &str| {
        let at = argv.iter().position(|a| *a == name);
        at.and_then(|i| argv.get(i + 1))
            .copied()
            .unwrap_or_default()
    };
    assert_eq!(argv[..2], ["warren-producer", "serve"]);
    let index = Path::new(flag("--index"));
    let mount = list(&status["volumeMounts"])
        .iter()
        .find(|m| index.starts_with(str_of(&m["mountPath"])))
        .unwrap_or_else(|| panic!("the index {index:?} is on no mounted volume"));
    let claims = list(&set["spec"]["volumeClaimTemplates"]);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["name"], mount["name"]);
    assert_eq!(
        list(&claims[0]["spec"]["accessModes"]),
        [Yaml::String("ReadWriteOnce".into())]
    );
    let pod_security = &set["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        pod_security["fsGroup"], pod_security["runAsGroup"],
        "the volume is writable by the non-root user"
    );
    let worker = container(object(&objects, "Deployment", "warren-worker"), "worker");
    assert_eq!(
        str_of(&env(worker, "WARREN_EVENTS_STREAM")["value"]),
        flag("--events-stream"),
        "the workers record into the stream the index follows"
    );
    assert_eq!(
        probe(status, "readinessProbe"),
        ("/readyz".into(), 8080, "http".into())
    );
    let headless = object(&objects, "Service", str_of(&set["spec"]["serviceName"]));
    assert_eq!(str_of(&headless["spec"]["clusterIP"]), "None");
    let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
    let monitored: Vec<&Yaml> = objects
        .iter()
        .filter(|o| str_of(&o["kind"]) == "Service")
        .filter(|s| selects(&s["spec"]["selector"], pod_labels))
        .filter(|s| {
            let monitor = object(&objects, "ServiceMonitor", "warren-status");
            selects(
                &monitor["spec"]["selector"]["matchLabels"],
                &s["metadata"]["labels"],
            )
        })
        .collect();
    assert_eq!(monitored.len(), 1, "each pod is scraped once");
}

/// Two replicas, one leading by the lease: each reads the schedule from the ConfigMap that
/// kustomization.yaml makes of schedule.toml, is probed on its admin port, outlives a tick's
/// confirm when stopped, and runs like the workers (non-root, read-only, no capabilities).
/// Evictions keep one replica to take the lease.
#[test]
fn scheduler_deployment_runs_two_replicas_of_its_schedule_with_probes() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-scheduler");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
    let pod = &deployment["spec"]["template"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    let scheduler = container(deployment, "scheduler");
    let command: Vec<&str> = list(&scheduler["command"]).iter().map(str_of).collect();
    assert_eq!(command, ["warren-scheduler"]);

    let port = port_of(str_of(&env(scheduler, "WARREN_ADMIN_ADDR")["value"]));
    assert_ne!(port, 9090, "the worker's admin port, the image's default");
    assert_eq!(
        probe(scheduler, "livenessProbe"),
        ("/healthz".into(), port, "admin".into())
    );
    assert_eq!(
        probe(scheduler, "readinessProbe"),
        ("/readyz".into(), port, "admin".into())
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(str_of(&annotations["prometheus.io/port"]), port.to_string());

    // WARREN_SCHEDULE names schedule.toml in a read-only mount of the generated ConfigMap.
    let schedule = str_of(&env(scheduler, "WARREN_SCHEDULE")["value"]);
    let (dir, key) = schedule.rsplit_once('/').expect("an absolute path");
    let mount = list(&scheduler["volumeMounts"])
        .iter()
        .find(|m| str_of(&m["mountPath"]) == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = list(&pod["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let config_map = str_of(&volume["configMap"]["name"]);
    let kustomization = &load(&format!("{K8S_DIR}/kustomization.yaml"))[0];
    let generator = list(&kustomization["configMapGenerator"])
        .iter()
        .find(|g| str_of(&g["name"]) == config_map)
        .unwrap_or_else(|| panic!("kustomization.yaml generates no ConfigMap {config_map}"));
    let files: Vec<&str> = list(&generator["files"]).iter().map(str_of).collect();
    assert_eq!(
        files,
        [key],
        "the ConfigMap's key is the file WARREN_SCHEDULE names"
    );
    assert_eq!(format!("{K8S_DIR}/{key}"), K8S_SCHEDULE);
    let workers = container(object(&objects, "Deployment", "warren-worker"), "worker");
    check_schedule(
        K8S_SCHEDULE,
        str_of(&env(workers, "WARREN_QUEUES")["value"]),
    );

    outlives(pod, scheduler, "WARREN_CONFIRM_TIMEOUT");
    runs_bounded_as_non_root_with_the_secret(pod, scheduler);
    let security = &scheduler["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        list(&security["capabilities"]["drop"]),
        [Yaml::String("ALL".into())]
    );

    let pdb = object(&objects, "PodDisruptionBudget", "warren-scheduler");
    assert!(selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    assert_eq!(
        pdb["spec"]["minAvailable"].as_i64(),
        Some(1),
        "an eviction leaves a replica to take the lease"
    );
}
