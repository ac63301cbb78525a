//! The `sipdesk` command: run the PBX, or check a configuration file.

use clap::{Args, Parser, Subcommand};
use sipdesk::config::Config;
use sipdesk::Pbx;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "sipdesk",
    version,
    about = "An embedded SIP PBX",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the PBX (the default).
    Run(RunArgs),
    /// Validate a configuration file; exits non-zero naming the bad key and line.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Export records from the data directory (the PBX must not be running: the
    /// database is locked while it is).
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
}

#[derive(Subcommand, Debug)]
enum ExportWhat {
    /// The built-in sounds as WAV files (8 kHz, 16-bit) into a directory, to
    /// listen to or to start a replacement from.
    Sounds {
        /// Where to write hold-music.wav, overflow.wav and confirm.wav.
        dir: PathBuf,
    },
    /// Response records (customers' histories), by caller then time, as JSON to
    /// standard output.
    Responses {
        /// Only this caller's.
        #[arg(long)]
        caller: Option<String>,
        #[command(flatten)]
        at: RunArgs,
    },
    /// Call detail records, oldest first, to standard output.
    Cdr {
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        #[command(flatten)]
        at: RunArgs,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Format {
    Csv,
    Json,
}

#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Configuration file (default: the embedded conf/sipdesk.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (overrides `data.dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} users, {} groups)",
                    file.display(),
                    c.users.len(),
                    c.groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Run(args)) => run(args),
        Some(Command::Export {
            what: ExportWhat::Cdr { format, at },
        }) => export_cdr(format, at),
        Some(Command::Export {
            what: ExportWhat::Sounds { dir },
        }) => export_sounds(&dir),
        Some(Command::Export {
            what: ExportWhat::Responses { caller, at },
        }) => export_responses(caller.as_deref(), at),
        None => run(cli.run),
    }
}

fn load_config(args: &RunArgs) -> Result<Config, ExitCode> {
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Config::embedded(),
    };
    config.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// Reads from the stopped PBX's store.
fn read_store<T>(
    at: RunArgs,
    read: impl FnOnce(&sipdesk::Archive) -> Result<T, sipdesk::StoreError>,
) -> Result<T, ExitCode> {
    let config = load_config(&at)?;
    let dir = at.data_dir.unwrap_or(config.data.dir);
    sipdesk::Archive::open(&dir)
        .and_then(|s| read(&s))
        .map_err(|e| {
            eprintln!("error: {}: {e} (is the PBX still running?)", dir.display());
            ExitCode::FAILURE
        })
}

fn export_responses(caller: Option<&str>, at: RunArgs) -> ExitCode {
    let records = read_store(at, |s| match caller {
        Some(c) => s.responses(c),
        None => s.all_responses(),
    });
    match records {
        Ok(r) => match serde_json::to_string_pretty(&r) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(code) => code,
    }
}

fn export_cdr(format: Format, at: RunArgs) -> ExitCode {
    let cdrs = match read_store(at, |s| s.cdrs()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Written through a locked handle: a closed pipe (`| head`) just ends the output.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = match format {
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(&mut out);
            cdrs.iter()
                .try_for_each(|c| csv.serialize(c.csv_row()))
                .and_then(|()| Ok(csv.flush()?))
                .map_err(|e| match e.into_kind() {
                    csv::ErrorKind::Io(io) => io,
                    other => std::io::Error::other(format!("{other:?}")),
                })
        }
        Format::Json => serde_json::to_writer_pretty(&mut out, &cdrs)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
    };
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn export_sounds(dir: &std::path::Path) -> ExitCode {
    use sipdesk::media::prompt::Prompt;
    let sounds = [
        ("hold-music.wav", Prompt::hold_music()),
        ("overflow.wav", Prompt::sorry()),
        ("confirm.wav", Prompt::confirm()),
    ];
    for (name, prompt) in sounds {
        let path = dir.join(name);
        if let Err(e) =
            std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, prompt.to_wav()))
        {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!(
            "{} ({:.1} s)",
            path.display(),
            prompt.duration().as_secs_f32()
        );
    }
    ExitCode::SUCCESS
}

fn run(args: RunArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.level.clone());
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: log.level `{filter}`: {e}");
            return ExitCode::from(2);
        }
    };
    let json = config.log.format == sipdesk::config::LogFormat::Json;
    init_logs(filter, json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut builder = Pbx::builder(config);
        if let Some(dir) = args.data_dir {
            builder = builder.data_dir(dir);
        }
        let pbx = match builder.start().await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        banner(&pbx, args.config.as_deref(), json);
        wait_for_signal().await;
        tracing::info!("shutting down");
        match pbx.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: final flush: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Logs go to standard output: JSON lines with `log.format = "json"`, else
/// text, coloured only on a terminal (and never with `NO_COLOR` set).
fn init_logs(filter: tracing_subscriber::EnvFilter, json: bool) {
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        logs.json().flatten_event(true).init();
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        logs.with_ansi(colour).init();
    }
}

/// The start-up banner; the demo passwords go to standard error when standard
/// output carries JSON logs (it stays one JSON object per line).
fn banner(pbx: &Pbx, config: Option<&std::path::Path>, json: bool) {
    let c = pbx.config();
    let list = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    tracing::info!(
        "sipdesk {} started: SIP UDP [{}] TCP [{}], domain {}, config {}, data {}, {} users, {} bindings",
        env!("CARGO_PKG_VERSION"),
        list(pbx.udp_addrs()),
        list(pbx.tcp_addrs()),
        c.domain(),
        config.map_or("embedded default".to_string(), |p| p.display().to_string()),
        pbx.data_dir().display(),
        pbx.users().len(),
        pbx.registrar().count(sipdesk::UnixMillis::now()),
    );
    let desk = pbx.http_addr();
    tracing::info!("desk: agent desktop http://{desk}/ wallboard http://{desk}/wallboard API http://{desk}/api/v1");
    if !pbx.demo_users().is_empty() {
        use std::fmt::Write;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "\nDemo extensions were created (shown once; only their hashes are stored):"
        );
        let _ = writeln!(text, "  domain/realm: {}", c.domain());
        for u in pbx.demo_users() {
            let _ = writeln!(
                text,
                "  extension {:<6} password {}",
                u.extension, u.password
            );
        }
        let supervisor = &c.demo.supervisor;
        if c.demo_desk() && !c.demo.group.is_empty() {
            let _ = writeln!(
                text,
                "  group {} (all of them){}{}{}",
                c.demo.group,
                if c.demo.queue.is_empty() {
                    String::new()
                } else {
                    format!(", queue {} answered by it", c.demo.queue)
                },
                if c.demo.ring_group.is_empty() {
                    String::new()
                } else {
                    format!(", {} rings all its phones", c.demo.ring_group)
                },
                if supervisor.is_empty() {
                    String::new()
                } else {
                    format!(", {supervisor} is the desk's supervisor")
                },
            );
        }
        if c.demo_desk() && c.demo.voicemail {
            let _ = writeln!(
                text,
                "  each has a mailbox: a call not answered in {} s leaves a message; {} plays them",
                c.calls.ring_timeout_secs, c.features.voicemail
            );
        }
        let _ = writeln!(
            text,
            "\nThe agent desktop: http://{desk}/  (log in with an extension and its password)"
        );
        let _ = writeln!(text, "The wallboard:     http://{desk}/wallboard\n");
        match json {
            true => eprint!("{text}"),
            false => print!("{text}"),
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
