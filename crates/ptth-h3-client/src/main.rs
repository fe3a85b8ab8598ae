//! `ptth-h3-client`: our own public HTTP/3 client, on `ptth-h3` and quinn. `get` sends one
//! request like curl; `load` is an h2load-like load generator for the benchmarks and the
//! interop matrix.

mod connect;
mod get;
mod load;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "ptth-h3-client",
    version,
    about = "HTTP/3 client: one request (get) or an h2load-like load (load)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach and trust the server; shared by both subcommands.
#[derive(Debug, Args)]
struct TargetArgs {
    /// The https:// URL; its host is the SNI and :authority.
    url: String,
    /// CA certificates (PEM) to trust instead of the WebPKI roots.
    #[arg(long, conflicts_with = "insecure")]
    cacert: Option<PathBuf>,
    /// Do not verify the server certificate.
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Dial this UDP address (HOST:PORT) instead of the URL's host and port.
    #[arg(long, value_name = "HOST:PORT")]
    connect_to: Option<String>,
    /// Seconds the QUIC and HTTP/3 handshake may take.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    connect_timeout: f64,
}

impl TargetArgs {
    fn trust(&self) -> connect::Trust {
        match (&self.cacert, self.insecure) {
            (Some(p), _) => connect::Trust::CaFile(p.clone()),
            (None, true) => connect::Trust::Insecure,
            (None, false) => connect::Trust::WebPki,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send one request; the body goes to stdout (or -o FILE) as it arrives.
    Get {
        #[command(flatten)]
        target: TargetArgs,
        /// Request method (default GET, or POST with --data-binary).
        #[arg(short = 'X', long = "request", value_name = "METHOD")]
        method: Option<String>,
        /// A request header field, 'name: value' (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Request body: @FILE (streamed from the file) or the literal text.
        #[arg(long, value_name = "@FILE|TEXT")]
        data_binary: Option<String>,
        /// Give up after this many seconds in all.
        #[arg(long, value_name = "SECS")]
        max_time: Option<f64>,
        /// Write the body to FILE instead of stdout.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Append a final line "\n<status> 3", like curl -w "\n%{http_code} %{http_version}".
        #[arg(short = 'w', long = "write-status")]
        write_status: bool,
    },
    /// Load the server: C connections with M requests in flight each, like h2load.
    Load {
        #[command(flatten)]
        target: TargetArgs,
        /// QUIC connections.
        #[arg(short = 'c', long = "clients", default_value_t = 1)]
        connections: usize,
        /// Requests in flight per connection.
        #[arg(short = 'm', long = "max-concurrent-streams", default_value_t = 1)]
        streams: usize,
        /// Total requests (after the warm-up).
        #[arg(
            short = 'n',
            long = "requests",
            conflicts_with = "duration",
            required_unless_present = "duration"
        )]
        requests: Option<u64>,
        /// Run for this many seconds (after the warm-up).
        #[arg(short = 'D', long = "duration", value_name = "SECS")]
        duration: Option<f64>,
        /// Seconds of uncounted requests before measuring.
        #[arg(long = "warm-up", default_value_t = 0.0, value_name = "SECS")]
        warm_up: f64,
        /// Seconds one request may take before it counts as a timeout.
        #[arg(
            short = 'T',
            long = "timeout",
            default_value_t = 30.0,
            value_name = "SECS"
        )]
        timeout: f64,
        /// Print one JSON object instead of the h2load-style summary.
        #[arg(long)]
        json: bool,
    },
}

/// curl's exit code for a timeout.
const EXIT_TIMEOUT: u8 = 28;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ptth-h3-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::TimedOut(secs)) => {
            eprintln!("ptth-h3-client: operation timed out after {secs} s");
            ExitCode::from(EXIT_TIMEOUT)
        }
        Err(Failure::Error(e)) => {
            eprintln!("ptth-h3-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
enum Failure {
    TimedOut(f64),
    Error(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Error(e)
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Get {
            target,
            method,
            headers,
            data_binary,
            max_time,
            output,
            write_status,
        } => {
            let args = get::GetArgs {
                trust: target.trust(),
                connect_timeout: get::seconds("--connect-timeout", target.connect_timeout)?,
                url: target.url,
                connect_to: target.connect_to,
                method,
                headers,
                data: data_binary,
                output,
                write_status,
            };
            match max_time {
                Some(secs) => {
                    let limit = get::seconds("--max-time", secs)?;
                    tokio::time::timeout(limit, get::run(args))
                        .await
                        .map_err(|_| Failure::TimedOut(secs))??;
                }
                None => get::run(args).await?,
            }
        }
        Command::Load {
            target,
            connections,
            streams,
            requests,
            duration,
            warm_up,
            timeout,
            json,
        } => {
            let amount = match (requests, duration) {
                (Some(n), _) => load::Amount::Total(n),
                (None, Some(d)) => load::Amount::For(get::seconds("-D", d)?),
                (None, None) => return Err(anyhow::anyhow!("give -n TOTAL or -D SECONDS").into()),
            };
            let warm_up = if warm_up == 0.0 {
                std::time::Duration::ZERO
            } else {
                get::seconds("--warm-up", warm_up)?
            };
            load::run(load::LoadArgs {
                trust: target.trust(),
                connect_timeout: get::seconds("--connect-timeout", target.connect_timeout)?,
                url: target.url,
                connect_to: target.connect_to,
                connections,
                streams,
                amount,
                warm_up,
                timeout: get::seconds("--timeout", timeout)?,
                json,
            })
            .await?;
        }
    }
    Ok(())
}
