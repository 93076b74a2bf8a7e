//! The snap packaging, checked without snapcraft (it needs LXD or Multipass):
//! `snap/snapcraft.yaml` against the upstream schema with the real `check-jsonschema`, then
//! what the schema cannot see (part keys, scripts, apps, version), the layout snapcraft
//! would prime packed by snapd's own `snap pack`, and the daemon's reload-command run
//! against the real agent.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use common::{skip, Agent, Scratch};

const RELOAD_SCRIPT: &str = "snap/local/bin/pocketses-reload";
/// snapcraft's schema, kept in the repository so that every clone checks against it.
const SCHEMA: &str = "tests/fixtures/snapcraft/snapcraft.schema.json";

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
// Schema: the real check-jsonschema against the schema copy in tests/fixtures/snapcraft.

/// The schema path when check-jsonschema is installed; otherwise skips.
fn schema_and_tool() -> Option<PathBuf> {
    match check_jsonschema_command().arg("--version").output() {
        Ok(out) if out.status.success() => Some(repo(SCHEMA)),
        _ => {
            skip("check-jsonschema is not installed (pip install check-jsonschema==0.39.0, as .ci/run does)");
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
fn schema_copy_is_the_file_its_source_note_describes() {
    let out = Command::new("sha256sum")
        .arg(repo(SCHEMA))
        .output()
        .expect("run sha256sum");
    let digest = String::from_utf8_lossy(&out.stdout);
    let digest = digest.split_whitespace().next().expect("a sha256 digest");
    let note = fs::read_to_string(repo("tests/fixtures/snapcraft/SOURCE.md")).unwrap();
    assert!(
        note.contains(&format!("`{digest}`")),
        "{SCHEMA} (sha256 {digest}) is not the file SOURCE.md describes: update the note"
    );
}

#[test]
fn schema_check_rejects_broken_copies_of_snapcraft_yaml() {
    let Some(schema) = schema_and_tool() else {
        return;
    };
    let text = snapcraft_text();
    let dir = Scratch::new();
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
        let copy = dir.path(&format!("broken-{i}.yaml"));
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

    let dir = Scratch::new();
    fs::write(dir.path("configure"), "#!/bin/sh\nexit 0\n").unwrap();
    fs::write(dir.path("install"), "#!/bin/bash\nexit 0\n").unwrap();
    fs::set_permissions(dir.path("install"), fs::Permissions::from_mode(0o755)).unwrap();
    let problems = script_problems(dir.dir());
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

const PLUGS: [&str; 6] = [
    "system-observe",
    "network-observe",
    "network-bind",
    "network",
    "hardware-observe",
    "mount-observe",
];

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

/// Every file the parts put into the snap, as its path in the snap and where it comes from:
/// `bin/<name>` for each cargo binary of a rust part (the ones this test run built), and each
/// file of a dump part (renamed by `organize`).
fn shipped(doc: &Value) -> BTreeMap<String, PathBuf> {
    let built = Path::new(env!("CARGO_BIN_EXE_pocketses"));
    let mut files = BTreeMap::new();
    for part in doc["parts"].as_object().unwrap().values() {
        let source = repo(part["source"].as_str().expect("part source"));
        match part["plugin"].as_str() {
            Some("rust") => files.extend(
                (cargo_binaries().into_iter())
                    .map(|b| (format!("bin/{b}"), built.with_file_name(b))),
            ),
            Some("dump") => {
                for file in files_under(&source) {
                    let rel = file.strip_prefix(&source).unwrap().to_string_lossy();
                    let renamed = part["organize"][rel.as_ref()].as_str().unwrap_or(&rel);
                    files.insert(renamed.to_string(), file.clone());
                }
            }
            _ => {}
        }
    }
    files
}

#[test]
fn every_app_command_is_a_file_the_snap_ships() {
    let doc = snapcraft();
    let shipped = shipped(&doc);
    assert!(
        shipped.contains_key("bin/pocketses"),
        "shipped: {shipped:?}"
    );
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
                shipped.contains_key(program),
                "app {name}: {key} {command:?} names {program:?}, which no part ships ({shipped:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Packing: the layout snapcraft would prime, packed by snapd's own `snap pack`, which
// validates meta/snap.yaml and refuses a snap whose app commands are missing.

/// Top-level snapcraft.yaml keys that snapcraft copies into meta/snap.yaml as they are.
const SNAP_YAML_KEYS: &[&str] = &[
    "name",
    "title",
    "version",
    "summary",
    "description",
    "license",
    "base",
    "confinement",
    "grade",
    "apps",
    "hooks",
    "plugs",
    "slots",
    "layout",
    "environment",
    "epoch",
    "assumes",
];

/// Keys that tell snapcraft how to build; meta/snap.yaml has none of them (`platforms`
/// becomes the `architectures` of the one being built).
const SNAPCRAFT_ONLY_KEYS: &[&str] = &[
    "parts",
    "platforms",
    "adopt-info",
    "build-base",
    "package-repositories",
];

/// This machine's architecture as snaps name it.
fn snap_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64el",
        other => panic!("no snap architecture known for {other}"),
    }
}

/// meta/snap.yaml as snapcraft writes it when building `doc` for `arch`.
fn snap_yaml(doc: &Value, arch: &str) -> Value {
    let mut meta = serde_json::Map::new();
    for (key, value) in doc.as_object().expect("snapcraft.yaml is a mapping") {
        if SNAP_YAML_KEYS.contains(&key.as_str()) {
            meta.insert(key.clone(), value.clone());
        } else {
            assert!(
                SNAPCRAFT_ONLY_KEYS.contains(&key.as_str()),
                "snapcraft.yaml key {key:?}: add it to SNAP_YAML_KEYS or SNAPCRAFT_ONLY_KEYS"
            );
        }
    }
    meta.insert("architectures".into(), json!([arch]));
    Value::Object(meta)
}

/// Copies `from` to `to`, creating `to`'s directory; the mode (executable bits) comes along.
fn copy_into(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).expect("create directory in prime");
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// Lays out in `dir` what snapcraft would prime for `doc`: the parts' files, snap/hooks in
/// meta/hooks, snap/gui in meta/gui, and meta/snap.yaml for this machine's architecture.
fn prime(doc: &Value, dir: &Path) {
    for (path, source) in shipped(doc) {
        copy_into(&source, &dir.join(path));
    }
    for (assets, into) in [("snap/hooks", "meta/hooks"), ("snap/gui", "meta/gui")] {
        let assets = repo(assets);
        for file in files_under(&assets) {
            copy_into(
                &file,
                &dir.join(into).join(file.strip_prefix(&assets).unwrap()),
            );
        }
    }
    let yaml = serde_yaml_ng::to_string(&snap_yaml(doc, snap_arch())).expect("snap.yaml");
    fs::write(dir.join("meta/snap.yaml"), yaml).expect("write meta/snap.yaml");
}

/// Whether `snap pack` can run here; otherwise skips.
fn snap_pack_available() -> bool {
    // Not `snap version`: it retries a stale /run/snapd.socket for 25 s.
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let available = runs("snap", &["pack", "--help"]) && runs("mksquashfs", &["-version"]);
    if !available {
        skip("`snap pack` needs snap and mksquashfs (apt-get install snapd squashfs-tools, as .ci/run does)");
    }
    available
}

/// `snap pack` of `doc` primed in `dir/prime`, and the snaps it wrote to `dir/out`.
fn pack(doc: &Value, dir: &Scratch) -> (Output, Vec<PathBuf>) {
    prime(doc, &dir.path("prime"));
    let out = Command::new("snap")
        // lzo: a third less time than the default xz on the debug binary; the check is the
        // same.
        .args(["pack", "--compression=lzo"])
        .arg(dir.path("prime"))
        .arg(dir.path("out"))
        .output()
        .expect("run snap pack");
    (out, files_under(&dir.path("out")))
}

#[test]
fn snap_pack_accepts_the_primed_snap() {
    if !snap_pack_available() {
        return;
    }
    let dir = Scratch::new();
    let (out, packed) = pack(&snapcraft(), &dir);
    assert!(out.status.success(), "snap pack: {}", transcript(&out));
    let [packed] = &packed[..] else {
        panic!("snap pack wrote {packed:?}, want one snap");
    };
    assert_eq!(
        packed.file_name().unwrap().to_string_lossy(),
        format!(
            "pocketses_{}_{}.snap",
            env!("CARGO_PKG_VERSION"),
            snap_arch()
        )
    );
    let listing = Command::new("unsquashfs")
        .args(["-l", "-d", ""])
        .arg(packed)
        .output()
        .expect("run unsquashfs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "/bin/pocketses",
        "/bin/pocketses-reload",
        "/meta/snap.yaml",
        "/meta/hooks/configure",
        "/meta/gui/icon.png",
    ] {
        assert!(
            listing.lines().any(|l| l == file),
            "{file} is not in the snap: {listing}"
        );
    }
}

#[test]
fn snap_pack_refuses_a_misspelt_command_and_an_unknown_daemon_type() {
    if !snap_pack_available() {
        return;
    }
    let text = snapcraft_text();
    let reload = format!(
        "reload-command: {}",
        RELOAD_SCRIPT.trim_start_matches("snap/local/")
    );
    for (good, bad, named) in [
        (
            reload.as_str(),
            "reload-command: bin/pocketses-reloa",
            "bin/pocketses-reloa",
        ),
        ("daemon: simple", "daemon: simplex", "simplex"),
    ] {
        assert!(text.contains(good), "snapcraft.yaml no longer has {good:?}");
        let (out, packed) = pack(&parse(&text.replacen(good, bad, 1)), &Scratch::new());
        assert!(
            !out.status.success() && packed.is_empty(),
            "snap pack accepted {bad:?}: {}",
            transcript(&out)
        );
        assert!(
            transcript(&out).contains(named),
            "{bad:?}: {}",
            transcript(&out)
        );
    }
}

// ---------------------------------------------------------------------------------------
// The reload-command itself, as systemd runs it: MAINPID set to the running agent.

#[test]
fn reload_command_makes_the_running_agent_reload_in_place() {
    let mut agent = Agent::start(&["--sinks", "stdout", "--interval", "0.2"]);
    agent.snapshot_where("a snapshot", |_| true);

    let out = Command::new(repo(RELOAD_SCRIPT))
        .env("MAINPID", agent.pid().to_string())
        .output()
        .expect("run the reload script");
    assert!(out.status.success(), "reload script: {}", transcript(&out));

    agent.next_log("reload");
    assert!(agent.is_running(), "SIGHUP ended the agent");
    // Still publishing after the reload, i.e. the same process carries on.
    agent.snapshot_where("a snapshot after the reload", |_| true);

    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit();
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
