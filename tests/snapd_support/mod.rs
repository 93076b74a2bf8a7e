//! Helpers for `tests/snapd.rs`: the snapd stand-in and a real snapd. The agent and
//! process helpers are shared with the other tests in `tests/common`.

pub mod fake;
pub mod real;

/// The section names of a snapshot, in order, without the timestamp.
pub fn sections(snapshot: &serde_json::Value) -> Vec<String> {
    snapshot
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "timestamp").cloned().collect())
        .unwrap_or_default()
}

/// Runs `command` to its end: (exit code, stderr, peak resident memory in KiB). The peak is
/// the kernel's own figure for that one process (wait4's `ru_maxrss`), so it holds even for
/// a process that lives only milliseconds.
pub fn run_measuring_memory(command: &mut std::process::Command) -> (i32, String, u64) {
    use std::io::Read;
    use std::process::Stdio;
    #[expect(clippy::zombie_processes, reason = "reaped by wait4 below")]
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        pipe.read_to_end(&mut text).map(|_| text)
    });
    let mut status = 0;
    // SAFETY: rusage is plain old data (all zeros is valid); the child is ours and not yet
    // reaped; both pointers are to live locals. No safe wrapper (std, nix) gives the rusage
    // of one child.
    let (pid, usage) = unsafe {
        let mut usage: nix::libc::rusage = std::mem::zeroed();
        let pid = nix::libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
        (pid, usage)
    };
    assert_eq!(pid, child.id() as i32, "wait4");
    let stderr = String::from_utf8_lossy(&reader.join().unwrap().unwrap()).into_owned();
    let code = match nix::libc::WIFEXITED(status) {
        true => nix::libc::WEXITSTATUS(status),
        false => -1,
    };
    (code, stderr, usage.ru_maxrss as u64)
}
