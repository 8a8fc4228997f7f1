//! `waybill`: business transaction lineage over OpenTelemetry, stored in
//! ClickHouse. Subcommands: `serve` (default), `migrate`, `check-config`,
//! `lineage explain`, `lineage rebuild`, `demo`.


use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use waybill::config::Config;
use waybill::serve;

#[derive(Parser)]
#[command(name = "waybill", version, about = "Where each business transaction is, from OpenTelemetry data in ClickHouse")]
struct Cli {
    /// YAML config file (env WAYBILL_CONFIG); without one, defaults apply.
    #[arg(long, global = true, env = "WAYBILL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply schema migrations and retention, then exit.
    Migrate,
    /// Validate the config (file and WAYBILL_* overrides) and print it.
    CheckConfig,
    /// Business lineage tools: test mapping rules, rebuild lineage.
    Lineage {
        #[command(subcommand)]
        command: LineageCommand,
    },
    /// Send a continuous, realistic distribution workload to a running Waybill.
    Demo(waybill::demo::DemoArgs),
    /// Read a password from standard input and print its hash for
    /// `dashboards.auth.users[].password_hash`.
    HashPassword,
}

#[derive(Subcommand)]
enum LineageCommand {
    /// Print what every span, span event and log record of an OTLP/JSON
    /// file (as exporters send to /v1/traces or /v1/logs) maps to under
    /// the configured rules. Reads no store.
    Explain { file: PathBuf },
    /// Re-extract business events from the spans and log records stored in
    /// the last SINCE (e.g. 7d, 12h) with the configured rules, and
    /// recompute all lineage. With the embedded store, stop the service first.
    Rebuild {
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
    },
}

/// `waybill hash-password`: the first line of standard input, hashed.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("waybill: cannot read the password from standard input");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("waybill: the password is empty: type it, then Enter (or pipe it in)");
        return ExitCode::from(2);
    }
    println!("{}", waybill_dashboards::auth::hash_password(password));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no config: it is how a config's password hashes are made.
    if matches!(cli.command, Some(Command::HashPassword)) {
        return hash_password();
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("waybill: {err}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    match &command {
        Command::CheckConfig => {
            println!("config is valid:\n{:#?}", config.redacted());
            return ExitCode::SUCCESS;
        }
        Command::Lineage { command: LineageCommand::Explain { file } } => {
            return match waybill::lineage::explain(&config.lineage, file, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("waybill: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("waybill: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = waybill::telemetry::init(&config).context("cannot set up Waybill's own telemetry")?;
        let result = match command {
            Command::Serve => serve::run(config).await,
            Command::Migrate => migrate(config).await,
            Command::Lineage { command: LineageCommand::Rebuild { since } } => waybill::lineage::rebuild(config, since).await,
            Command::Demo(args) => waybill::demo::run(args).await,
            Command::CheckConfig | Command::HashPassword | Command::Lineage { command: LineageCommand::Explain { .. } } => unreachable!("handled above"),
        };
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("waybill: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = waybill_store::Store::open(&config.store).await.context("cannot open the store")?;
    let result = store.migrate().await;
    store.close().await;
    let report = result.context("migration failed")?;
    if report.applied.is_empty() {
        println!("schema is at version {}; nothing to apply", report.version);
    } else {
        println!("applied schema versions {:?}; schema is at version {}", report.applied, report.version);
    }
    for table in &report.retention_changed {
        println!("retention of {table} set to {} days", config.store.retention_days);
    }
    for table in &report.rebuilt {
        println!("{table} rebuilt with its current settings");
    }
    Ok(())
}
