//! The `ptth-origin` binary: a thin shell over the `ptth_origin` library.
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set) it says `READY=1` once its
//! configuration is checked and it starts dialling (not when a connection registers: an
//! origin whose gateway is down is still a running service that keeps dialling), and
//! `STOPPING=1` on SIGTERM. It has nothing to reload, so it never says `RELOADING=1`.

use clap::{CommandFactory, FromArgMatches};
use ptth_origin::config::{init_logging, Cli, Serve};
use ptth_origin::service::Hello;
use ptth_origin::Origin;
use sd_notify::NotifyState;

/// Raises glibc's heap trim threshold for this process, by running it again with
/// `GLIBC_TUNABLES=glibc.malloc.trim_threshold=4194304` (the same PID, arguments, descriptors and environment, plus
/// that one variable; `exec` replaces the image).
///
/// Why: glibc gives the top of a heap back to the kernel once 128 KiB of it are free
/// (`M_TRIM_THRESHOLD`). A response or upload body crosses the process in pieces of up to
/// 64 KiB that are allocated, filled and freed in turn, so with the default the freed top is
/// given back and the next piece faults its pages in afresh: a 1 GiB download through
/// library mode spent 10 % of the gateway's CPU in page faults and ran at about 750 MB/s;
/// with a 4 MiB threshold, about 1 150 MB/s on 45 % less gateway CPU
/// (`docs/performance.md`, finding 14). The cost is at most 4 MiB of free heap kept per
/// malloc arena.
///
/// An operator's own `GLIBC_TUNABLES` wins: when it is set, nothing is changed (and that is
/// also how the second start knows it is the second). If the `exec` fails (no `/proc`), the
/// process runs on with glibc's defaults. Only glibc builds on Linux do this.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| "ptth-origin".into());
        // Returns only if the image could not be replaced.
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", TUNABLES)
            .exec();
    }
}

/// What [`tune_allocator`] sets: a 4 MiB heap trim threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TUNABLES: &str = "glibc.malloc.trim_threshold=4194304";

/// Configuration errors exit with 2, failures while running with 1; either prints the
/// error's chain on one line (never a backtrace, whatever `RUST_BACKTRACE` says).
/// `--check-config` exits 0 or 1.
fn main() -> std::process::ExitCode {
    tune_allocator();
    // `--check-config` belongs to the binary, not to the library's settings.
    let matches = Cli::command()
        .arg(
            clap::Arg::new("check-config")
                .long("check-config")
                .action(clap::ArgAction::SetTrue)
                .help("Load and check the configuration (files readable, credential and certificates parse), print `config ok` or the error, and exit 0 or 1"),
        )
        .get_matches();
    let check = matches.get_flag("check-config");
    let parsed = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let settled = parsed.merge_file().and_then(|cli| {
        init_logging(cli.log_format.as_deref())?;
        Ok(cli)
    });
    let cli = match settled {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("ptth-origin: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if check {
        return check_config(cli);
    }
    // Resolved and checked here, not when the runtime starts, so a bad TLS file is a
    // configuration error.
    let settled = cli
        .resolve()
        .and_then(|(config, serve)| Ok((Origin::new(config)?, serve)));
    let (origin, serve) = match settled {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ptth-origin: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // The connections run on worker threads of their own (`OriginConfig::workers`, from
    // --threads); this runtime keeps the signals, the admin listener and the slots' joins.
    let ran = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(origin, serve)));
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the origin stopped");
            eprintln!("ptth-origin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--check-config`: resolves the configuration and prepares TLS and the credential as a
/// start would, without dialling; says `config ok` or why not, and exits 0 or 1.
fn check_config(cli: Cli) -> std::process::ExitCode {
    // Resolving builds the routes too (upstream URLs parsed, TLS settings loaded).
    let checked = cli
        .resolve()
        .and_then(|(config, _serve)| Origin::new(config).map(drop));
    match checked {
        Ok(()) => {
            println!("config ok");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) where the service is.
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

async fn run(origin: Origin, serve: Serve) -> anyhow::Result<()> {
    // Registered before READY: a SIGTERM that came before its handler would end the
    // process at once (the signal's default action) instead of draining it.
    let stopped = shutdown_signal()?;
    let stop = async {
        stopped.await;
        notify(&[NotifyState::Stopping]);
    };
    match serve {
        Serve::Hello => {
            notify(&[NotifyState::Ready]);
            origin.serve(Hello::new(), stop).await?
        }
        Serve::Upstream(routes) => {
            notify(&[NotifyState::Ready]);
            origin.serve(routes, stop).await?
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C; the handlers are in place when this returns.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
