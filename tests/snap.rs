//! The snap packaging, checked without building the snap (snapcraft needs LXD or Multipass):
//! `snap/snapcraft.yaml` against the upstream schema with the real `check-jsonschema`, then
//! what the schema cannot see (part keys, scripts, apps, version), and the daemon's
//! reload-command run against the real agent.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Long enough for a loaded shared machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);
const RELOAD_SCRIPT: &str = "snap/local/bin/pocketses-reload";

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn snapcraft_text() -> String {
    fs::read_to_string(repo("snap/snapcraft.yaml")).expect("read snap/snapcraft.yaml")
}

fn parse(yaml: &str) -> Value {
    serde_yaml_ng::from_str(yaml).expect("snap/snapcraft.yaml is valid YAML")
}

fn snapcraft() -> Value {
    parse(&snapcraft_text())
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("snap-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Every file below `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for path in entries.map(|e| e.expect("read dir entry").path()) {
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------
// Schema: the real check-jsonschema against the schema copy in ../shared.

/// The schema path when both it and check-jsonschema are there; otherwise says why not.
fn schema_and_tool() -> Option<PathBuf> {
    let schema = repo("../shared/snap/snapcraft.schema.json");
    if !schema.is_file() {
        eprintln!(
            "skipping: {} is missing (the shared/ folder beside the repo)",
            schema.display()
        );
        return None;
    }
    match check_jsonschema_command().arg("--version").output() {
        Ok(out) if out.status.success() => Some(schema),
        _ => {
            eprintln!("skipping: check-jsonschema is not installed (pip install check-jsonschema==0.39.0, as .ci/run does)");
            None
        }
    }
}

/// Run through python3 so a console-script shim missing from PATH does not matter.
fn check_jsonschema_command() -> Command {
    let mut command = Command::new("python3");
    command.args(["-m", "check_jsonschema"]);
    command
}

fn check_jsonschema(schema: &Path, yaml: &Path) -> Output {
    // --verbose: the default summary can name an unrelated key because of the top-level oneOf.
    check_jsonschema_command()
        .arg("--verbose")
        .arg("--schemafile")
        .arg(schema)
        .arg(yaml)
        .output()
        .expect("run check-jsonschema")
}

fn transcript(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn snapcraft_yaml_passes_the_snapcraft_schema() {
    let Some(schema) = schema_and_tool() else {
        return;
    };
    let out = check_jsonschema(&schema, &repo("snap/snapcraft.yaml"));
    assert!(
        out.status.success(),
        "snap/snapcraft.yaml fails the schema:\n{}",
        transcript(&out)
    );
}

#[test]
fn schema_check_rejects_broken_copies_of_snapcraft_yaml() {
    let Some(schema) = schema_and_tool() else {
        return;
    };
    let text = snapcraft_text();
    let dir = scratch("schema");
    let quoted_version = format!("version: '{}'", env!("CARGO_PKG_VERSION"));
    let breakages = [
        ("daemon: simple", "daemon: simpel"),
        ("install-mode: disable", "install-mode: disabled"),
        // Unquoted, YAML reads a number; snapcraft wants a string.
        (quoted_version.as_str(), "version: 0.1"),
        ("confinement: strict", "confinement: loose"),
    ];
    for (i, (good, bad)) in breakages.into_iter().enumerate() {
        assert!(text.contains(good), "snapcraft.yaml no longer has {good:?}");
        let copy = dir.join(format!("broken-{i}.yaml"));
        fs::write(&copy, text.replacen(good, bad, 1)).expect("write broken copy");
        let out = check_jsonschema(&schema, &copy);
        assert!(
            !out.status.success(),
            "check-jsonschema accepted snapcraft.yaml with {bad:?}:\n{}",
            transcript(&out)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Parts: the schema lets any key through, so a typo like `rust-chanel` would be silently
// ignored by nothing but snapcraft at build time.

/// Keys every craft-parts part accepts, whatever its plugin.
const PART_KEYS: &[&str] = &[
    "plugin",
    "source",
    "source-type",
    "source-checksum",
    "source-branch",
    "source-tag",
    "source-commit",
    "source-depth",
    "source-submodules",
    "source-subdir",
    "after",
    "disable-parallel",
    "build-attributes",
    "build-environment",
    "build-packages",
    "build-snaps",
    "stage-packages",
    "stage-snaps",
    "organize",
    "stage",
    "prime",
    "override-pull",
    "override-build",
    "override-stage",
    "override-prime",
    "permissions",
    "parse-info",
];

/// The keys a plugin adds (craft_parts/plugins/*_plugin.py); `None` for plugins not
/// vetted here.
fn plugin_keys(plugin: &str) -> Option<&'static [&'static str]> {
    match plugin {
        "rust" => Some(&[
            "rust-channel",
            "rust-features",
            "rust-no-default-features",
            "rust-path",
            "rust-use-global-lto",
            "rust-cargo-parameters",
            "rust-ignore-toolchain-file",
            "rust-inherit-ldflags",
        ]),
        "dump" | "nil" => Some(&[]),
        _ => None,
    }
}

/// One line per part key that the part's plugin does not know.
fn part_key_problems(doc: &Value) -> Vec<String> {
    let parts = doc["parts"].as_object().expect("parts is a mapping");
    let mut problems = Vec::new();
    for (name, part) in parts {
        let plugin = part["plugin"].as_str().unwrap_or("");
        let Some(extra) = plugin_keys(plugin) else {
            problems.push(format!("part {name}: plugin {plugin:?} is not vetted here"));
            continue;
        };
        for key in part.as_object().expect("part is a mapping").keys() {
            if !PART_KEYS.contains(&key.as_str()) && !extra.contains(&key.as_str()) {
                problems.push(format!(
                    "part {name}: unknown key {key:?} for plugin {plugin}"
                ));
            }
        }
    }
    problems
}

#[test]
fn parts_use_only_keys_their_plugin_knows() {
    let doc = snapcraft();
    assert_eq!(part_key_problems(&doc), Vec::<String>::new());
    let agent = doc["parts"]
        .as_object()
        .unwrap()
        .values()
        .find(|p| p["plugin"] == "rust")
        .expect("a part with plugin: rust");
    assert_eq!(agent["source"], ".", "the rust part builds this repository");

    let typo = parse(&snapcraft_text().replacen("rust-channel:", "rust-chanel:", 1));
    let problems = part_key_problems(&typo);
    assert!(
        problems.iter().any(|p| p.contains("\"rust-chanel\"")),
        "a misspelt rust-channel went unnoticed: {problems:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Scripts: hooks (snap/hooks/*) and helpers (snap/local/*) run under the base's /bin/sh.

/// One line per script that is not executable or does not start with `#!/bin/sh`.
fn script_problems(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for path in files_under(dir) {
        let mode = fs::metadata(&path)
            .expect("stat script")
            .permissions()
            .mode();
        if mode & 0o111 != 0o111 {
            problems.push(format!(
                "{}: not executable (mode {mode:o})",
                path.display()
            ));
        }
        let text = fs::read_to_string(&path).unwrap_or_default();
        let shebang = text.lines().next().unwrap_or("");
        if shebang.split_whitespace().next() != Some("#!/bin/sh") {
            problems.push(format!(
                "{}: first line {shebang:?}, want #!/bin/sh",
                path.display()
            ));
        }
    }
    problems
}

#[test]
fn hooks_and_helper_scripts_are_executable_posix_sh() {
    let dirs = [repo("snap/hooks"), repo("snap/local")];
    let checked: Vec<PathBuf> = dirs.iter().flat_map(|d| files_under(d)).collect();
    assert!(
        checked.contains(&repo(RELOAD_SCRIPT)),
        "{RELOAD_SCRIPT} was not among the checked scripts: {checked:?}"
    );
    let problems: Vec<String> = dirs.iter().flat_map(|d| script_problems(d)).collect();
    assert_eq!(problems, Vec::<String>::new());

    let dir = scratch("scripts");
    fs::write(dir.join("configure"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::write(dir.join("install"), "#!/bin/bash\nexit 0\n").unwrap();
    fs::set_permissions(dir.join("install"), fs::Permissions::from_mode(0o755)).unwrap();
    let problems = script_problems(&dir);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("configure: not executable"))
            && problems.iter().any(|p| p.contains("install: first line")),
        "a non-executable hook or a bash hook went unnoticed: {problems:?}"
    );
}

/// One line per hook declared in snapcraft.yaml that has no file in `hooks_dir`.
fn hooks_without_files(doc: &Value, hooks_dir: &Path) -> Vec<String> {
    let Some(declared) = doc.get("hooks").and_then(Value::as_object) else {
        return Vec::new();
    };
    declared
        .keys()
        .filter(|name| !hooks_dir.join(name).is_file())
        .map(|name| {
            format!(
                "hook {name} is declared but {}/{name} is missing",
                hooks_dir.display()
            )
        })
        .collect()
}

#[test]
fn declared_hooks_have_their_files() {
    // snapcraft turns a declared hook without a file into a `#!/bin/true` stub: a
    // configure hook like that would accept every `snap set`.
    let hooks = repo("snap/hooks");
    assert_eq!(
        hooks_without_files(&snapcraft(), &hooks),
        Vec::<String>::new()
    );

    let stub = parse(&format!(
        "{}\nhooks:\n  no-such-hook: {{}}\n",
        snapcraft_text()
    ));
    assert_eq!(
        hooks_without_files(&stub, &hooks),
        [format!(
            "hook no-such-hook is declared but {}/no-such-hook is missing",
            hooks.display()
        )]
    );
}

// ---------------------------------------------------------------------------------------
// Interfaces and apps.

/// The files below `dir` that contain `needle`.
fn files_mentioning(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            let bytes = fs::read(path).expect("read file");
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .collect()
}

#[test]
fn nothing_in_snap_asks_for_snapd_control() {
    let snap = repo("snap");
    assert_eq!(
        files_mentioning(&snap, "snapd-control"),
        Vec::<PathBuf>::new(),
        "snapd-control is super-privileged and never auto-connected; read settings with snapctl"
    );
    // The same search does find what is there.
    assert!(files_mentioning(&snap, "system-observe").contains(&repo("snap/snapcraft.yaml")));
}

const PLUGS: [&str; 3] = ["system-observe", "network-observe", "network-bind"];

#[test]
fn daemon_is_a_disabled_simple_service_that_reloads_in_place() {
    let doc = snapcraft();
    let daemon = &doc["apps"]["daemon"];
    assert_eq!(daemon["daemon"], "simple");
    assert_eq!(
        daemon["install-mode"], "disable",
        "the service must wait until the observe interfaces are connected"
    );
    assert_eq!(daemon["restart-condition"], "on-failure");
    assert_eq!(
        daemon["reload-command"],
        RELOAD_SCRIPT.trim_start_matches("snap/local/"),
        "without a reload-command, `snap restart --reload` restarts and drops subscribers"
    );
    assert!(
        daemon.get("stop-mode").is_none(),
        "stop-mode changes the stop signal; SIGTERM is the agent's clean stop"
    );
    let foreground = &doc["apps"]["pocketses"];
    assert!(
        foreground.get("daemon").is_none(),
        "`pocketses` runs in the foreground"
    );
    for app in [daemon, foreground] {
        let plugs: Vec<&str> = app["plugs"]
            .as_array()
            .expect("plugs list")
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(plugs, PLUGS);
    }
    assert_eq!(doc["confinement"], "strict");
    assert_eq!(doc["base"], "core24");
}

#[test]
fn snap_version_is_the_cargo_version() {
    assert_eq!(
        snapcraft()["version"],
        env!("CARGO_PKG_VERSION"),
        "bump version in snap/snapcraft.yaml together with Cargo.toml"
    );
}

/// The binary targets cargo builds (and so the rust plugin installs into bin/).
fn cargo_binaries() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(repo(""))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", transcript(&out));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    meta["packages"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// Every path the parts put into the snap that apps may name: `bin/<name>` for each cargo
/// binary of a rust part, and each file of a dump part (renamed by `organize`).
fn shipped(doc: &Value) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for part in doc["parts"].as_object().unwrap().values() {
        let source = repo(part["source"].as_str().expect("part source"));
        match part["plugin"].as_str() {
            Some("rust") => paths.extend(cargo_binaries().iter().map(|b| format!("bin/{b}"))),
            Some("dump") => {
                for file in files_under(&source) {
                    let rel = file.strip_prefix(&source).unwrap().to_string_lossy();
                    let renamed = part["organize"][rel.as_ref()].as_str().unwrap_or(&rel);
                    paths.insert(renamed.to_string());
                }
            }
            _ => {}
        }
    }
    paths
}

#[test]
fn every_app_command_is_a_file_the_snap_ships() {
    let doc = snapcraft();
    let shipped = shipped(&doc);
    assert!(shipped.contains("bin/pocketses"), "shipped: {shipped:?}");
    for (name, app) in doc["apps"].as_object().expect("apps") {
        for key in [
            "command",
            "reload-command",
            "stop-command",
            "post-stop-command",
        ] {
            let Some(command) = app[key].as_str() else {
                continue;
            };
            let program = command.split_whitespace().next().unwrap_or("");
            assert!(
                shipped.contains(program),
                "app {name}: {key} {command:?} names {program:?}, which no part ships ({shipped:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The reload-command itself, as systemd runs it: MAINPID set to the running agent.

/// Forwards each line of a child's pipe to a channel, so reads can time out.
fn lines<R: std::io::Read + Send + 'static>(pipe: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`, returning the lines seen until then.
fn wait_for(rx: &Receiver<String>, needle: &str) -> Result<String, Vec<String>> {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(line) if line.contains(needle) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => return Err(seen),
        }
    }
}

struct Agent {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Agent {
    fn start() -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pocketses"))
            .args(["--no-snap", "--sinks", "stdout", "--interval", "0.2"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pocketses");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let stderr: ChildStderr = child.stderr.take().unwrap();
        Agent {
            child,
            stdout: lines(stdout),
            stderr: lines(stderr),
        }
    }

    fn next_snapshot(&self) -> String {
        let line = self
            .stdout
            .recv_timeout(PATIENCE)
            .expect("a snapshot on stdout");
        assert!(line.starts_with("{\"timestamp\""), "not a snapshot: {line}");
        line
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn reload_command_makes_the_running_agent_reload_in_place() {
    let mut agent = Agent::start();
    let pid = agent.child.id();
    agent.next_snapshot();

    let out = Command::new(repo(RELOAD_SCRIPT))
        .env("MAINPID", pid.to_string())
        .output()
        .expect("run the reload script");
    assert!(out.status.success(), "reload script: {}", transcript(&out));

    if let Err(seen) = wait_for(&agent.stderr, "reload") {
        panic!("the agent logged no reload after SIGHUP; its log: {seen:?}");
    }
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the agent"
    );
    // Still publishing after the reload, i.e. the same process carries on.
    agent.next_snapshot();

    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM the agent");
    let status = agent.child.wait().expect("wait for the agent");
    assert!(status.success(), "agent after SIGTERM: {status}");
}

#[test]
fn reload_command_refuses_to_run_without_mainpid() {
    let out = Command::new(repo(RELOAD_SCRIPT))
        .env_remove("MAINPID")
        .output()
        .expect("run the reload script");
    assert!(!out.status.success(), "ran without MAINPID");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MAINPID is not set"),
        "unclear message: {}",
        transcript(&out)
    );
}
