//! The command line: `dirbridge [-c FILE] <command>`. Exit codes are in [`crate::exit`].

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::clock::SystemClock;
use crate::config::{self, Config};
use crate::control::{Request, Response};
use crate::exit;
use crate::plan::output;
use crate::run::{self, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "dirbridge",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("DIRBRIDGE_GIT_COMMIT"), ")"),
    about = "Turn the HR export into directory accounts: plan, preview and apply the difference.",
    long_about = "dirbridge reads the HR export (CSV, JSON, JSON Lines), mirrors it and the directory in SQLite, \
maps records to entries through templates, and writes exactly the difference to OpenLDAP - after showing it.\n\n\
Start with `dirbridge check-config`, then `dirbridge plan`, then `dirbridge sync`.",
    after_help = "Exit codes: 0 done; 3 finished with quarantined records or entries; 4 refused by a safety gate \
(nothing written); 66 the export could not be read; 69 the directory was unreachable (or TLS/bind failed); \
75 another run holds the lock; 78 configuration error; 2 usage error.\n\nSee dirbridge(8) and dirbridge.toml(5)."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, value_name = "FILE", default_value = config::DEFAULT_PATH, env = "DIRBRIDGE_CONFIG")]
    pub config: PathBuf,

    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The daemon's control socket (default: daemon.socket of the configuration).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A per-entry diff to review.
    Text,
    /// {"summary": {...}, "changes": [...]} for scripts.
    Json,
    /// The LDIF that would be sent, replayable with ldapmodify.
    Ldif,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
    /// Prometheus text exposition.
    Prometheus,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportKind {
    /// Who is in which managed group, why, and since when.
    Access,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Csv,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the configuration: every key, every template against the export's header, the
    /// password file. Reports all problems at once as file:line:col. Exit 78 on error.
    CheckConfig {
        /// Also bind to the directory and check that its schema has every attribute and object class.
        #[arg(long)]
        online: bool,
    },
    /// Show what a sync would change, without changing anything. Exit 4 when a safety gate would
    /// refuse, 3 when records are quarantined.
    Plan {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also write the plan as JSON to this file.
        #[arg(long, value_name = "PLAN")]
        out: Option<PathBuf>,
        /// Evaluate dates as of this day (YYYY-MM-DD); only matters with [lifecycle].
        #[arg(long, value_name = "DATE", value_parser = parse_date)]
        as_of: Option<String>,
        /// Act on one person only (a canary), by HR key.
        #[arg(long, value_name = "KEY")]
        only: Option<String>,
        /// Go ahead although this safety gate refuses (repeatable); the override is audited.
        #[arg(long = "accept-gate", value_name = "GATE", value_parser = clap::builder::PossibleValuesParser::new(crate::plan::gates::GATES))]
        accept_gate: Vec<String>,
        /// Read the whole directory even when an incremental read is possible.
        #[arg(long)]
        full_read: bool,
    },
    /// Why a person has each value and group: templates and source columns, the group rules that
    /// grant, placement, lifecycle state and next change, and the audit history.
    Explain {
        /// HR key, uid or DN.
        who: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Evaluate dates as of this day (YYYY-MM-DD).
        #[arg(long, value_name = "DATE", value_parser = parse_date)]
        as_of: Option<String>,
    },
    /// The audit trail: every change dirbridge sent, when, why and how it ended (newest first).
    History {
        /// Only changes at or after this time (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only changes for this HR key (or DN fragment).
        #[arg(long)]
        who: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Reports: `access` lists who is in which managed group, why, and since when.
    Report {
        #[arg(value_enum)]
        kind: ReportKind,
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
    },
    /// Run as a service in the foreground: sync on schedule, when the export changes, on SIGUSR1
    /// and on request; SIGHUP reloads the configuration; SIGTERM finishes what is in flight.
    Daemon,
    /// The daemon's state: uptime, configuration, last run, next run, alarms.
    Status {
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
    },
    /// Print a shell completion script (bash, zsh, fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Ask the daemon for a run now.
    Trigger {
        /// Wait for the run and exit with its exit code.
        #[arg(long)]
        wait: bool,
    },
    /// Ask the daemon to load its configuration again (a bad file keeps the old one).
    Reload,
    /// Hold the daemon's runs (a maintenance window).
    Pause,
    /// Let the daemon's runs go again (a held trigger runs now).
    Resume,
    /// Apply the difference to the directory. Ends with a one-line summary.
    Sync {
        /// Compute and print the plan; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Evaluate dates as of this day (YYYY-MM-DD); only matters with [lifecycle].
        #[arg(long, value_name = "DATE", value_parser = parse_date)]
        as_of: Option<String>,
        /// Act on one person only (a canary), by HR key.
        #[arg(long, value_name = "KEY")]
        only: Option<String>,
        /// Go ahead although this safety gate refuses (repeatable); the override is audited.
        #[arg(long = "accept-gate", value_name = "GATE", value_parser = clap::builder::PossibleValuesParser::new(crate::plan::gates::GATES))]
        accept_gate: Vec<String>,
        /// Read the whole directory even when an incremental read is possible.
        #[arg(long)]
        full_read: bool,
    },
}

fn parse_date(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s.chars()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    let month: u32 = s.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(0);
    let day: u32 = s.get(8..10).and_then(|m| m.parse().ok()).unwrap_or(0);
    if ok && (1..=12).contains(&month) && (1..=31).contains(&day) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a date of the form YYYY-MM-DD"))
    }
}

fn init_logging(verbose: u8, format: LogFormat, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    // The commands print their own report on stderr; the log adds detail with -v. The daemon
    // logs its runs.
    let default = match (verbose, daemon) {
        (0, false) => "error",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd (JOURNAL_STREAM set), structured records to journald; without a journal
    // socket (containers, tests) fall back to stderr.
    if format == LogFormat::Text && std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(layer) = tracing_journald::layer() {
            use tracing_subscriber::prelude::*;
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer.with_syslog_identifier("dirbridge".into()))
                .try_init();
            return;
        }
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn load(path: &std::path::Path, mode: config::Check) -> Result<Config, i32> {
    match config::load(path, mode) {
        Ok((cfg, warnings)) => {
            for w in warnings.warnings() {
                eprintln!("{w}");
            }
            Ok(cfg)
        }
        Err(diags) => {
            eprint!("{diags}");
            let n = diags.errors().count();
            eprintln!(
                "{n} error{} in {}",
                if n == 1 { "" } else { "s" },
                path.display()
            );
            Err(exit::CONFIG)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("dirbridge: cannot start the runtime: {e}");
            exit::SOFTWARE
        })
}

fn print(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// The entry point of the `dirbridge` binary. Returns the process exit code.
pub fn main() -> i32 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    init_logging(
        cli.verbose,
        cli.log_format,
        matches!(cli.command, Command::Daemon),
    );
    match cli.command {
        Command::CheckConfig { online } => {
            let cfg = match load(&cli.config, config::Check::Strict) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if online {
                let rt = match runtime() {
                    Ok(r) => r,
                    Err(c) => return c,
                };
                match rt.block_on(run::check_online(&cfg)) {
                    Ok(url) => eprintln!("online: bound to {url}; the schema has every configured attribute and object class"),
                    Err(e) => {
                        eprintln!("dirbridge: {e}");
                        return e.exit_code();
                    }
                }
                let mut unreachable = false;
                for (name, r) in rt.block_on(run::check_apps_online(&cfg)) {
                    match r {
                        Ok(m) => eprintln!("online: apps.{name}: {m}"),
                        Err(e) => {
                            eprintln!("dirbridge: apps.{name}: {e}");
                            unreachable = true;
                        }
                    }
                }
                if unreachable {
                    return exit::UNAVAILABLE;
                }
            }
            let resolved = serde_json::to_string_pretty(&cfg).unwrap_or_default();
            print(&format!("{resolved}\n"));
            eprintln!(
                "{}: configuration OK ({} columns in the export, {} attribute templates)",
                cli.config.display(),
                cfg.header.len(),
                cfg.users.attributes.len()
            );
            exit::OK
        }
        Command::Plan {
            format,
            out,
            as_of,
            only,
            accept_gate,
            full_read,
        } => run_command(
            &cli.config,
            RunArgs {
                format,
                dry_run: true,
                out,
                as_of,
                only,
                accept: accept_gate,
                is_plan: true,
                full_read,
            },
        ),
        Command::Explain { who, format, as_of } => {
            explain_command(&cli.config, &who, format, as_of)
        }
        Command::History {
            since,
            who,
            limit,
            format,
        } => history_command(&cli.config, since, who, limit, format),
        Command::Report {
            kind: ReportKind::Access,
            format,
        } => report_command(&cli.config, format),
        Command::Daemon => crate::daemon::main(&cli.config),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "dirbridge", &mut out);
            print(&String::from_utf8_lossy(&out));
            exit::OK
        }
        Command::Status { format } => control_command(&cli, Request::Status, Some(format)),
        Command::Trigger { wait } => control_command(&cli, Request::Trigger { wait }, None),
        Command::Reload => control_command(&cli, Request::Reload, None),
        Command::Pause => control_command(&cli, Request::Pause, None),
        Command::Resume => control_command(&cli, Request::Resume, None),
        Command::Sync {
            dry_run,
            format,
            as_of,
            only,
            accept_gate,
            full_read,
        } => run_command(
            &cli.config,
            RunArgs {
                format,
                dry_run,
                out: None,
                as_of,
                only,
                accept: accept_gate,
                is_plan: false,
                full_read,
            },
        ),
    }
}

struct RunArgs {
    format: Format,
    dry_run: bool,
    out: Option<PathBuf>,
    as_of: Option<String>,
    only: Option<String>,
    accept: Vec<String>,
    is_plan: bool,
    full_read: bool,
}

fn run_command(path: &std::path::Path, args: RunArgs) -> i32 {
    let RunArgs {
        format,
        dry_run,
        out,
        as_of,
        only,
        accept,
        is_plan,
        full_read,
    } = args;
    let cfg = match load(path, config::Check::Run) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let (Some(d), None) = (&as_of, &cfg.lifecycle) {
        eprintln!(
            "note: --as-of {d} changes nothing here: the configuration has no [lifecycle] section"
        );
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let opts = RunOptions {
        summary_only: !matches!(format, Format::Ldif),
        dry_run,
        only,
        as_of,
        details: false,
        accept,
        full_read,
        ..Default::default()
    };
    let outcome = match rt.block_on(run::run(&cfg, &opts, &SystemClock)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dirbridge: {e}");
            eprintln!("nothing was written");
            return e.exit_code();
        }
    };
    if let Some(p) = out {
        if let Err(e) = std::fs::write(&p, output::json(&outcome.plan)) {
            eprintln!("dirbridge: cannot write the plan to {}: {e}", p.display());
            return exit::SOFTWARE;
        }
    }
    if dry_run {
        match format {
            Format::Text => print(&output::text(&outcome.plan)),
            Format::Json => print(&output::json(&outcome.plan)),
            Format::Ldif => print(&output::ldif(&outcome.plan)),
        }
        if !is_plan {
            eprintln!("{}", outcome.summary_line());
        }
    } else {
        for f in &outcome.failed {
            eprintln!(
                "failed: {} {} (record {}): {}; the entry is quarantined for this run",
                f.change.op.as_str(),
                f.change.dn,
                f.change.key,
                f.failure
            );
        }
        for q in &outcome.plan.quarantined {
            let who = q
                .key
                .as_deref()
                .map(|k| format!("record {k}"))
                .unwrap_or_else(|| "a record".into());
            eprintln!("quarantined: {who}: {}", q.reason);
        }
        for r in &outcome.plan.refusals {
            eprintln!(
                "REFUSED by safety.{}: {} (to go ahead anyway: --accept-gate {})",
                r.gate, r.message, r.gate
            );
        }
        for r in &outcome.plan.accepted {
            eprintln!("accepted (--accept-gate {}): {}", r.gate, r.message);
        }
        if outcome.plan.deletes_suppressed {
            eprintln!("note: some records could not be read well enough to know their key: this run deleted nothing");
        }
        match format {
            Format::Json => print(&format!(
                "{}\n",
                serde_json::to_string_pretty(&outcome.summary_json()).unwrap_or_default()
            )),
            Format::Ldif => print(&output::ldif(&outcome.plan)),
            Format::Text => print(&format!("{}\n", outcome.summary_line())),
        }
    }
    outcome.exit_code()
}

fn details_run(
    path: &std::path::Path,
    as_of: Option<String>,
) -> Result<(Config, run::RunOutcome), i32> {
    let cfg = load(path, config::Check::Run)?;
    let rt = runtime()?;
    let opts = RunOptions {
        dry_run: true,
        only: None,
        as_of,
        details: true,
        accept: vec![],
        ..Default::default()
    };
    match rt.block_on(run::run(&cfg, &opts, &SystemClock)) {
        Ok(o) => Ok((cfg, o)),
        Err(e) => {
            eprintln!("dirbridge: {e}");
            Err(e.exit_code())
        }
    }
}

fn explain_command(
    path: &std::path::Path,
    who: &str,
    format: Format,
    as_of: Option<String>,
) -> i32 {
    let (cfg, outcome) = match details_run(path, as_of) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(d) = &outcome.details else {
        return exit::SOFTWARE;
    };
    let Some(key) = crate::explain::resolve(d, who) else {
        eprintln!(
            "dirbridge: nobody in the export or the directory is {who:?} (an HR key, uid or DN)"
        );
        return exit::NO_INPUT;
    };
    let history = crate::mirror::Mirror::open(&cfg.state)
        .and_then(|m| m.history(None, Some(&key), 20))
        .unwrap_or_default();
    let v = crate::explain::explain(&cfg, d, &key, &history);
    match format {
        Format::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )),
        _ => print(&crate::explain::explain_text(&v)),
    }
    exit::OK
}

fn history_command(
    path: &std::path::Path,
    since: Option<String>,
    who: Option<String>,
    limit: usize,
    format: Format,
) -> i32 {
    let cfg = match load(path, config::Check::Run) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rows = match crate::mirror::Mirror::open(&cfg.state)
        .and_then(|m| m.history(since.as_deref(), who.as_deref(), limit))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dirbridge: {e}");
            return exit::SOFTWARE;
        }
    };
    match format {
        Format::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        )),
        _ => {
            let mut s = String::new();
            for r in &rows {
                s.push_str(&format!(
                    "{} run {} {} {} [{}] {} — {}{}\n",
                    r.at,
                    r.run,
                    r.op,
                    r.dn,
                    r.key,
                    r.state,
                    r.reason,
                    if r.state == "failed" {
                        format!(" — error: {}", r.result)
                    } else {
                        String::new()
                    }
                ));
            }
            print(&s);
        }
    }
    exit::OK
}

fn report_command(path: &std::path::Path, format: ReportFormat) -> i32 {
    let (cfg, outcome) = match details_run(path, None) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(d) = &outcome.details else {
        return exit::SOFTWARE;
    };
    let mirror = crate::mirror::Mirror::open(&cfg.state).ok();
    let rows: Vec<crate::explain::AccessRow> = crate::explain::access(&cfg, d)
        .into_iter()
        .map(|(mut r, _)| {
            r.since = mirror
                .as_ref()
                .and_then(|m| m.member_since(&r.group, &r.member).ok().flatten());
            r
        })
        .collect();
    match format {
        ReportFormat::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        )),
        ReportFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(["group", "member", "hr_key", "rule", "since"]);
            for r in &rows {
                let _ = w.write_record([
                    r.group.as_str(),
                    r.member.as_str(),
                    r.key.as_deref().unwrap_or(""),
                    r.rule.as_deref().unwrap_or("not granted by a rule"),
                    r.since.as_deref().unwrap_or(""),
                ]);
            }
            print(&String::from_utf8_lossy(
                &w.into_inner().unwrap_or_default(),
            ));
        }
    }
    exit::OK
}

fn control_command(cli: &Cli, req: Request, format: Option<StatusFormat>) -> i32 {
    // The socket's path: --socket, else the configuration's (a user who may not read the
    // configuration gets the default).
    let socket = cli.socket.clone().unwrap_or_else(|| {
        config::load(&cli.config, config::Check::Run)
            .map(|(c, _)| c.daemon.socket)
            .unwrap_or_else(|_| PathBuf::from(config::DEFAULT_SOCKET))
    });
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let wait = if matches!(req, Request::Trigger { wait: true }) {
        24 * 3600
    } else {
        30
    };
    let resp = match rt.block_on(crate::control::call(
        &socket,
        &req,
        std::time::Duration::from_secs(wait),
    )) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dirbridge: {e}");
            return exit::UNAVAILABLE;
        }
    };
    match resp {
        Response::Status(s) => {
            match format.unwrap_or(StatusFormat::Text) {
                StatusFormat::Json => print(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&s).unwrap_or_default()
                )),
                StatusFormat::Prometheus => print(&crate::control::prometheus(&s)),
                StatusFormat::Text => print(&status_text(&s)),
            }
            if s.alarms.is_empty() {
                exit::OK
            } else {
                exit::QUARANTINED
            }
        }
        Response::Triggered { run: Some(r) } => {
            print(&format!("{}\n", r.summary));
            for e in &r.errors {
                eprintln!("error: {e}");
            }
            for g in &r.refusals {
                eprintln!("REFUSED: {g}");
            }
            r.exit_code
        }
        Response::Triggered { run: None } => {
            eprintln!("triggered: a run is queued");
            exit::OK
        }
        Response::Done { message } => {
            eprintln!("{message}");
            exit::OK
        }
        Response::Error { message } => {
            eprintln!("dirbridge: {message}");
            exit::CONFIG
        }
        Response::Unauthorized { message } => {
            eprintln!("dirbridge: unauthorized: {message}");
            77
        }
    }
}

fn status_text(s: &crate::control::StatusReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "dirbridge daemon, pid {}, up {}s (since {})\n",
        s.pid, s.uptime_seconds, s.started_at
    ));
    out.push_str(&format!(
        "configuration: {} (loaded {})\n",
        s.config_file, s.config_loaded_at
    ));
    if let Some(e) = &s.config_error {
        out.push_str(&format!(
            "  the last reload failed, the old configuration keeps running: {e}\n"
        ));
    }
    if s.paused {
        out.push_str("paused: no run starts until `dirbridge resume`\n");
    }
    if let Some((t, at)) = &s.running {
        out.push_str(&format!("running: a run triggered by {t} since {at}\n"));
    }
    match &s.last_run {
        Some(r) => {
            out.push_str(&format!(
                "last run #{} ({}, started {}, {:.2}s, exit {}): {}\n",
                r.id, r.trigger, r.started_at, r.duration_seconds, r.exit_code, r.summary
            ));
            for g in &r.refusals {
                out.push_str(&format!("  refused: {g}\n"));
            }
            for e in &r.errors {
                out.push_str(&format!("  error: {e}\n"));
            }
            for (a, h) in &r.apps {
                if h.reachable {
                    out.push_str(&format!(
                        "  app {a}: ok, {} planned, {} applied, {} failed, {} account(s) failing, {} request(s), {} retried\n",
                        h.planned, h.applied, h.failed, h.failing_accounts, h.requests, h.retries
                    ));
                } else {
                    out.push_str(&format!(
                        "  app {a}: UNREACHABLE: {}; its changes wait\n",
                        h.error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        None => out.push_str("last run: none yet\n"),
    }
    out.push_str(&format!(
        "last success: {}\n",
        s.last_success_at.as_deref().unwrap_or("none yet")
    ));
    out.push_str(&format!(
        "next scheduled run: {}\n",
        s.next_run.as_deref().unwrap_or("none (no daemon.schedule)")
    ));
    for a in &s.alarms {
        out.push_str(&format!("ALARM: {a}\n"));
    }
    out
}
