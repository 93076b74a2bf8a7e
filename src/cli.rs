//! The command line: flags, the run modes (`--list`, `--check`, `--once`, serve) and exit
//! codes (0 ok, 1 runtime failure, 2 bad configuration or usage).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Arg, CommandFactory, FromArgMatches, Parser};
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError, Origin};
use crate::pipeline::{warm_up, Collection, Pipeline};
use crate::plugin::{self, Plugin, SinkPlugin, SourcePlugin};
use crate::snapd::{values, Route, SnapdError};

const USAGE_ERROR: u8 = 2;
const RUNTIME_ERROR: u8 = 1;

/// Host metrics (CPU, memory, network) as one JSON document per interval, published to TCP
/// subscribers, stdout and a rotated JSON-lines file.
// The flags of the run modes are derived here; one flag per setting, core or plugin, is
// added from the declarations ([`Args::command_with_settings`]).
// The numeric settings take values that start with '-' (`--interval -inf`), so that the
// setting's own check names the key, the value and what is allowed, as for any bad value.
#[derive(Debug, Parser)]
#[command(
    name = "pocketses",
    version,
    about,
    after_help = AFTER_HELP,
    allow_negative_numbers = true,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Without a command, pocketses runs the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Collect one snapshot, print it to stdout and exit, whatever the sinks
    #[arg(long, conflicts_with_all = ["list", "check"])]
    pub once: bool,
    /// List the registered sources and sinks, with their settings and defaults
    #[arg(long, conflicts_with = "check")]
    pub list: bool,
    /// Validate the effective configuration and what the enabled sinks need (the file's path
    /// and directory, the bind address); print it or what is wrong, exit 0 or 2
    #[arg(long)]
    pub check: bool,
    /// Read the snap configuration even outside a snap
    #[arg(long, overrides_with = "no_snap")]
    pub snap: bool,
    /// Do not read the snap configuration
    #[arg(long)]
    pub no_snap: bool,
    /// The settings given as flags, as `(key, value)`.
    #[arg(skip)]
    pub settings: Vec<(&'static str, String)>,
}

/// What pocketses can do besides running the agent.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Draw a live terminal view of a TCP publisher; q or Ctrl-C quits
    #[cfg(feature = "watch")]
    Watch {
        /// The publisher: HOST:PORT, [::1]:8888, or a host for port 8888
        #[arg(default_value = crate::watch::DEFAULT_ADDR)]
        addr: String,
    },
    /// Print the completion script for a shell (bash, zsh, fish, ...)
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff); `make man` writes it to pocketses.1
    #[command(hide = true)]
    Man,
}

impl Command {
    /// Runs the command: help, completions and the manual page all come from the one
    /// definition of the command line, so they never disagree.
    fn run(self) -> anyhow::Result<()> {
        let mut command = Args::command_with_settings();
        let mut out = std::io::stdout().lock();
        match self {
            #[cfg(feature = "watch")]
            Command::Watch { addr } => crate::watch::run(&addr)?,
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut command, "pocketses", &mut out)
            }
            Command::Man => clap_mangen::Man::new(command).render(&mut out)?,
        }
        out.flush()?;
        Ok(())
    }
}

const AFTER_HELP: &str = "\
Settings come from built-in defaults, then the snap configuration (snap set pocketses key=value),
then these flags; later wins. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to filter.
Subscribe to the TCP publisher with: telnet 127.0.0.1 8888";

impl Args {
    /// The command line: the derived flags, then one `--<key>` per declared setting (the
    /// key with `.` as `-`), showing its default.
    pub fn command_with_settings() -> clap::Command {
        let mut command = Args::command();
        // The settings first, core then each plugin's, as `--check` lists them; then the
        // run modes.
        let modes: Vec<String> = (command.get_arguments())
            .map(|arg| arg.get_id().to_string())
            .collect();
        let mut order = 0;
        for setting in config::settings() {
            let help = format!("{} [default: {}]", setting.help, setting.default.text());
            command = command.arg(
                Arg::new(setting.key)
                    .long(setting.flag())
                    .value_name(setting.value_name())
                    .allow_hyphen_values(setting.numeric())
                    .help(help)
                    .display_order(order),
            );
            order += 1;
        }
        for mode in modes {
            command = command.mut_arg(mode, |arg| arg.display_order(order));
            order += 1;
        }
        command
    }

    /// Parses the process's arguments; exits on a usage error, `--help` or `--version`.
    pub fn from_env() -> Args {
        Args::from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name).
    pub fn from_args<I, T>(args: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Args::command_with_settings().try_get_matches_from(args)?;
        let mut parsed = Args::from_arg_matches(&matches)?;
        parsed.settings = (config::settings())
            .filter_map(|s| Some((s.key, matches.get_one::<String>(s.key)?.clone())))
            .collect();
        Ok(parsed)
    }

    /// The value given for `key` on the command line.
    fn setting(&self, key: &str) -> Option<&str> {
        (self.settings.iter())
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value.as_str())
    }
}

/// The effective configuration, and why the snap configuration is missing from it when it
/// was wanted but snapd could not give it (the configuration then holds defaults and flags).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub snap_unavailable: Option<SnapdError>,
}

/// Whether to read the snap configuration: `--no-snap` skips, `--snap` forces, otherwise
/// only inside a snap.
fn wants_snap(args: &Args) -> bool {
    !args.no_snap && (args.snap || std::env::var_os("SNAP_INSTANCE_NAME").is_some())
}

/// Builds the effective configuration: defaults, then snap configuration, then flags. All
/// invalid values are reported, not just the first.
pub async fn load_config(args: &Args) -> Result<Loaded, Vec<ConfigError>> {
    let mut config = Config::default();
    let mut errors = Vec::new();
    let mut snap_unavailable = None;
    if wants_snap(args) {
        match Route::from_env().read(&values::top_level_keys()).await {
            Ok(document) => errors = values::apply(&mut config, &document),
            Err(e) => snap_unavailable = Some(e),
        }
    }
    errors.extend(
        (args.settings.iter())
            .filter_map(|(key, value)| config.set(key, value, Origin::Flag).err()),
    );
    if errors.is_empty() {
        Ok(Loaded {
            config,
            snap_unavailable,
        })
    } else {
        Err(errors)
    }
}

pub fn main() -> ExitCode {
    let mut args = Args::from_env();
    if let Some(command) = args.command.take() {
        return match command.run() {
            Ok(()) => ExitCode::SUCCESS,
            // `pocketses man | head`: the reader had what it wanted.
            Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pocketses: {e:#}");
                ExitCode::from(RUNTIME_ERROR)
            }
        };
    }
    crate::logging::init();
    if args.list {
        print!("{}", plugin_list());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(RUNTIME_ERROR);
        }
    };
    let config = match runtime.block_on(load_config(&args)) {
        Ok(Loaded {
            snap_unavailable: Some(e),
            ..
        }) if args.check => {
            eprintln!("pocketses: cannot read the snap configuration: {e}");
            return ExitCode::from(USAGE_ERROR);
        }
        Ok(Loaded {
            config,
            snap_unavailable,
        }) => {
            if let Some(e) = snap_unavailable {
                warn!("snap configuration not read ({e}); using the built-in defaults and command-line flags");
            }
            config
        }
        Err(errors) => {
            for line in crate::config::error_lines(&errors) {
                eprintln!("pocketses: {line}");
            }
            return ExitCode::from(USAGE_ERROR);
        }
    };
    if args.check {
        // Then each enabled sink checks the settings it uses, without side effects; every
        // problem is printed, as for invalid values.
        let problems: Vec<String> = (config.sinks.iter())
            .filter_map(|&name| plugin::find::<SinkPlugin>(name))
            .filter_map(|sink| (sink.preflight)(&config.plugin_config(&sink.settings)).err())
            .collect();
        if !problems.is_empty() {
            for problem in problems {
                eprintln!("pocketses: {problem}");
            }
            return ExitCode::from(USAGE_ERROR);
        }
        print!("configuration is valid:\n{}", config.describe());
        return ExitCode::SUCCESS;
    }
    let result = if args.once {
        if let Some(sinks) = args.setting("sinks") {
            warn!("--once prints to stdout only; --sinks {sinks} is ignored");
        }
        once(runtime, &config)
    } else {
        serve(runtime, args, config)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(RUNTIME_ERROR)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    (e.chain())
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `--list`: the registered plugins with a line of description each, and under each its
/// settings as `key=default` with their help.
pub fn plugin_list() -> String {
    fn section<P: Plugin>(title: &str, out: &mut String) {
        out.push_str(title);
        out.push('\n');
        for p in P::all() {
            let name = plugin::display_name(p);
            out.push_str(&format!("  {name:<20} {}\n", p.description()));
            for setting in p.settings().keys {
                let key = format!("{}={}", setting.key, setting.default.text());
                out.push_str(&format!("    {key:<30} {}\n", setting.help));
            }
        }
    }
    let mut out = String::new();
    section::<SourcePlugin>("sources:", &mut out);
    section::<SinkPlugin>("sinks:", &mut out);
    out
}

/// `--once`: one snapshot, CPU utilization measured over the warm-up.
fn once(runtime: Runtime, config: &Config) -> anyhow::Result<()> {
    let frame = runtime.block_on(async {
        let mut collection = Collection::new(config)?;
        tokio::time::sleep(warm_up(config.interval)).await;
        anyhow::Ok(collection.collect().await)
    })?;
    // A source that missed the deadline may still be out on a blocking thread.
    runtime.shutdown_background();
    let mut out = std::io::stdout().lock();
    out.write_all(&frame.json)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Runs the pipeline until SIGTERM or SIGINT, or until it cannot go on (every sink finished
/// for good: `Ok`; the collector died: an error). SIGHUP reloads the configuration.
fn serve(runtime: Runtime, args: Args, config: Config) -> anyhow::Result<()> {
    crate::limits::raise_open_files();
    let served = runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let config = Arc::new(config);
        let mut pipeline = Pipeline::start(config.clone()).await?;
        info!(
            version = env!("CARGO_PKG_VERSION"),
            sources = %config.sources.join(","),
            sinks = %config.sinks.join(","),
            interval = ?config.interval,
            format = %config.format,
            "pocketses started"
        );
        let ended = loop {
            tokio::select! {
                _ = terminate.recv() => break Ok(()),
                _ = interrupt.recv() => break Ok(()),
                _ = hangup.recv() => reload(&args, &mut pipeline).await,
                ended = pipeline.ended() => break ended,
            }
        };
        info!("stopping");
        pipeline.shutdown().await;
        ended
    });
    // Dropping the runtime would wait, without limit, for blocking work a sink abandoned at
    // shutdown may still be stuck in; the process exits instead.
    runtime.shutdown_background();
    served
}

async fn reload(args: &Args, pipeline: &mut Pipeline) {
    match load_config(args).await {
        Ok(Loaded {
            snap_unavailable: Some(e),
            ..
        }) => error!("reload refused, the running configuration stays: cannot read the snap configuration: {e}"),
        Ok(Loaded { config, .. }) if pipeline.runs(&config) => {
            info!("reload: configuration unchanged")
        }
        Ok(Loaded { config, .. }) => {
            if let Err(e) = pipeline.reload(Arc::new(config)).await {
                error!("reload: {e}");
            }
        }
        Err(errors) => {
            error!(
                "reload refused, the running configuration stays: {}",
                crate::config::error_lines(&errors).join("; ")
            );
        }
    }
}
