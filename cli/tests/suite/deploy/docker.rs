//! The Dockerfile: every binary built by name, a stand-in for each in the dependency
//! skeleton, and binaries shipped without their debug info, for a non-root runtime.

use super::*;

/// The binaries the image ships, each with its service in Compose and Kubernetes.
pub(super) const BINARIES: [&str; 3] = ["warren-worker", "warren-producer", "warren-scheduler"];

/// The Dockerfile with its continuation lines joined: one line per instruction.
fn dockerfile() -> String {
    read("Dockerfile").replace("\\\n", " ")
}

/// The shell commands of the Dockerfile's `RUN` instructions from `FROM ... AS stage` up to
/// the next `FROM`.
fn stage_commands(dockerfile: &str, stage: &str) -> Vec<String> {
    let header = format!(" AS {stage}");
    dockerfile
        .lines()
        .skip_while(|l| !(l.starts_with("FROM ") && l.ends_with(&header)))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .filter_map(|l| l.strip_prefix("RUN "))
        .flat_map(|run| run.split(';'))
        .map(|c| c.trim().to_owned())
        .collect()
}

/// The binary targets of the workspace, by name, from `cargo metadata` run in `dir`.
fn binary_targets(dir: &Path) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run_ok(
        Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(dir),
    );
    let metadata: serde_json::Value = serde_json::from_str(&out).expect("cargo metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    packages
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&"bin".into()))
        })
        .map(|t| t["name"].as_str().expect("a target name").to_owned())
        .collect()
}

/// Both builds (the dependency layer and the real one) name every binary, by `--bin`, so the
/// Dockerfile does not care which package holds which binary; the runtime stage copies all
/// three and runs as a non-root user.
#[test]
fn dockerfile_builds_every_binary_by_name_for_a_non_root_runtime() {
    let dockerfile = dockerfile();
    let commands = stage_commands(&dockerfile, "builder");
    let builds: Vec<Vec<&str>> = commands
        .iter()
        .filter(|c| c.starts_with("cargo build"))
        .map(|c| c.split_whitespace().collect())
        .collect();
    assert_eq!(builds.len(), 2, "the dependency layer and the real build");
    for build in &builds {
        let bins: BTreeSet<&str> = build
            .windows(2)
            .filter(|w| w[0] == "--bin")
            .map(|w| w[1])
            .collect();
        assert_eq!(bins, BTreeSet::from(BINARIES), "{build:?}");
        assert!(
            !build
                .iter()
                .any(|w| ["-p", "--package", "--workspace"].contains(w)),
            "builds by binary name, not by package: {build:?}"
        );
        assert!(build.contains(&"--release") && build.contains(&"--locked"));
    }
    let targets = binary_targets(&repo());
    for binary in BINARIES {
        assert!(
            targets.contains(binary),
            "{binary} is not a binary of the workspace: {targets:?}"
        );
    }

    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .expect("a multi-stage Dockerfile")
        .1;
    let copied: Vec<&str> = runtime
        .lines()
        .filter(|l| l.starts_with("COPY --from=builder "))
        .flat_map(|l| l.split_whitespace())
        .collect();
    assert_eq!(copied.last(), Some(&"/usr/local/bin/"), "{copied:?}");
    for binary in BINARIES {
        let shipped = format!("/out/{binary}");
        assert!(
            copied.contains(&shipped.as_str()),
            "the image ships {binary}"
        );
    }
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(!["root", "0", "0:0"].contains(&user.trim()), "USER {user}");
    let exposed: Vec<&str> = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    for port in ["9090", "9092", "8080"] {
        assert!(exposed.contains(&port), "EXPOSE {port}: {exposed:?}");
    }
    assert!(runtime.contains("CMD [\"warren-worker\"]"));
    let dockerignore = read(".dockerignore");
    let ignored: Vec<&str> = dockerignore.lines().map(str::trim).collect();
    assert!(ignored.contains(&"target/") && ignored.contains(&".git/"));
}

/// The skeleton stage's script, run on this checkout, leaves a workspace in which cargo finds
/// every binary the dependency layer builds by name (a binary under `src/bin/` too), so
/// `cargo build --bin ...` on it does not fail with "no bin target named ...".
#[test]
fn dockerfile_skeleton_has_a_stand_in_for_every_binary() {
    let dir = TempDir::new("skeleton");
    let script = stage_commands(&dockerfile(), "skeleton")
        .join("; ")
        .replace("/skeleton", &dir.0.display().to_string());
    assert!(
        script.contains("Cargo.toml"),
        "the skeleton stage copies the manifests"
    );
    run_ok(
        Command::new("bash")
            .args(["-c", &script])
            .current_dir(repo()),
    );
    assert!(
        dir.0.join("Cargo.lock").is_file(),
        "the skeleton has the lock file"
    );
    let targets = binary_targets(&dir.0);
    for binary in BINARIES {
        assert!(
            targets.contains(binary),
            "the skeleton has no {binary}: {targets:?}"
        );
    }
}

/// The builder's strip step, run on this build's binaries, leaves binaries without debug
/// sections (what the image ships) that still run and name their debug file, and a debug
/// file per binary that has the debug info.
#[test]
fn dockerfile_ships_binaries_without_their_debug_info() {
    let Some(readelf) = find_in_path("readelf") else {
        skip_or_fail(
            "the Dockerfile's strip step",
            "readelf (binutils) is not installed",
        );
        return;
    };
    if find_in_path("objcopy").is_none() {
        skip_or_fail(
            "the Dockerfile's strip step",
            "objcopy (binutils) is not installed",
        );
        return;
    }
    let commands = stage_commands(&dockerfile(), "builder");
    let from = commands
        .iter()
        .position(|c| c.starts_with("mkdir -p /out/debug"))
        .expect("the builder makes /out/debug");
    let built = binary("warren-worker")
        .parent()
        .expect("a directory")
        .to_owned();
    let out = TempDir::new("out");
    let script = commands[from..]
        .join("; ")
        .replace("/out", &out.0.display().to_string())
        .replace("target/release/", &format!("{}/", built.display()));
    // Section names; `.debug_gdb_scripts` is loaded data (gdb's pretty-printers), not debug
    // info, and stays.
    let sections = |file: &Path| -> Vec<String> {
        run_ok(Command::new(&readelf).args(["-S", "-W"]).arg(file))
            .split_whitespace()
            .filter(|w| w.starts_with('.'))
            .map(String::from)
            .collect()
    };
    let is_debug_info = |name: &String| name.starts_with(".debug_") && name != ".debug_gdb_scripts";
    run_ok(Command::new("bash").args(["-euc", &script]));
    let out = &out.0;
    for binary in BINARIES {
        let shipped = out.join(binary);
        let shipped_sections = sections(&shipped);
        let debug_info: Vec<&String> = shipped_sections
            .iter()
            .filter(|s| is_debug_info(s))
            .collect();
        assert!(debug_info.is_empty(), "{binary} ships with {debug_info:?}");
        let has = |name: &str| shipped_sections.iter().any(|s| s == name);
        assert!(has(".gnu_debuglink"), "{binary} names its debug file");
        assert!(has(".symtab"), "{binary} keeps its symbols");
        let debug = out.join(format!("debug/{binary}.debug"));
        assert!(
            sections(&debug).iter().any(|s| s == ".debug_info"),
            "{} has no debug info",
            debug.display()
        );
        let original = std::fs::metadata(built.join(binary)).expect("built").len();
        let size = std::fs::metadata(&shipped).expect("shipped").len();
        assert!(size < original / 2, "{binary}: {size} of {original} bytes");
        run_ok(Command::new(&shipped).arg("--version"));
    }
}
