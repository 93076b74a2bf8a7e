//! `pocketses watch [ADDR]` until the subcommand is wired into the CLI (issue 14): the
//! library's view against a publisher, default 127.0.0.1:8888.

fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1);
    pocketses::watch::run(addr.as_deref().unwrap_or("127.0.0.1:8888"))
}
