//! The `ptth-gateway` binary: a thin shell over the `ptth_gateway` library.
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set) it says `READY=1` once every listener
//! is bound, `RELOADING=1` then `READY=1` around a SIGHUP reload, and `STOPPING=1` on
//! SIGTERM; elsewhere those notifications are skipped.

use clap::Parser;
use ptth_gateway::config::{init_logging, Cli};
use ptth_gateway::Gateway;
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
        let arg0 = args.next().unwrap_or_else(|| "ptth-gateway".into());
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
    let settled = Cli::parse().merge_file().and_then(|cli| {
        init_logging(cli.log_format.as_deref())?;
        Ok(cli)
    });
    let cli = match settled {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("ptth-gateway: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.check_config {
        return check_config(cli);
    }
    let (config, dev) = match cli.resolve() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ptth-gateway: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // The gateway serves on its own workers (`--threads`, one runtime per thread); this
    // thread only starts it, waits for signals and reloads the grants.
    let ran = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(serve(config, dev)));
    // The gateway has stopped and its workers have ended, every request with them: the
    // access log lines still queued are written before the process exits.
    ptth_gateway::access_log::flush();
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the gateway stopped");
            eprintln!("ptth-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--check-config`: loads and checks the configuration, says `config ok` or why not, and
/// exits 0 or 1. Binds nothing.
fn check_config(cli: Cli) -> std::process::ExitCode {
    let checked = cli
        .resolve()
        .and_then(|(config, _dev)| ptth_gateway::check_config(&config));
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

async fn serve(
    config: ptth_gateway::config::GatewayConfig,
    dev: Option<ptth_gateway::dev::DevFiles>,
) -> anyhow::Result<()> {
    // Before anything can say READY: a SIGHUP or SIGTERM that came before its handler would
    // end the process (their default action).
    let mut signals = Signals::new()?;
    let gateway = Gateway::start(&config).await?;
    if let Some(dev) = dev {
        let token = std::fs::read_to_string(&dev.token)?;
        tracing::info!(
            ca = %dev.ca.display(),
            token = %token.trim(),
            origin_cert = %dev.origin_cert.display(),
            origin_key = %dev.origin_key.display(),
            "dev mode: origins trust the CA above and present this token (only for development)"
        );
    }
    // Print the bound addresses on stdout, machine-readable, for scripts and tests. A closed
    // stdout loses the lines, not the gateway (`println!` would panic).
    let mut lines = String::new();
    if let Some(a) = gateway.listen {
        lines.push_str(&format!("listen={a}\n"));
    }
    if let Some(a) = gateway.listen_tls {
        lines.push_str(&format!("listen-tls={a}\n"));
    }
    if let Some(a) = gateway.admin {
        lines.push_str(&format!("admin={a}\n"));
    }
    lines.push_str(&format!("tunnel={}\n", gateway.tunnel));
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
    }
    notify(&[NotifyState::Ready]);
    // Serves until SIGTERM or Ctrl-C; on SIGHUP re-reads the grants from the config file.
    while let Signal::Reload = signals.next().await {
        // systemd 253 and later want the monotonic time with RELOADING=1.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => notify(&[NotifyState::Reloading, now]),
            Err(_) => notify(&[NotifyState::Reloading]),
        }
        match ptth_gateway::config::reload_grants(gateway.config())
            .inspect_err(|_| gateway.reload_failed())
            .and_then(|g| gateway.reload(g))
        {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload failed; the old grants stay in force")
            }
        }
        notify(&[NotifyState::Ready]);
    }
    notify(&[NotifyState::Stopping]);
    // Ctrl-C or SIGTERM again during the grace: stop at once.
    tokio::select! {
        _ = gateway.shutdown(config.shutdown_grace) => {}
        Signal::Stop = signals.next_stop() => tracing::warn!("second stop signal: stopping at once"),
    }
    gateway.stop();
    Ok(())
}

/// What a signal asks for.
enum Signal {
    /// SIGHUP: re-read the grants.
    Reload,
    /// SIGTERM or Ctrl-C (SIGINT): stop gracefully.
    Stop,
}

/// The signals the gateway acts on, registered once at start.
struct Signals {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                hup: signal(SignalKind::hangup())?,
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.hup.recv() => Signal::Reload,
                _ = self.term.recv() => Signal::Stop,
                _ = self.int.recv() => Signal::Stop,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }

    /// The next stop signal (a reload is ignored while stopping).
    async fn next_stop(&mut self) -> Signal {
        loop {
            if let Signal::Stop = self.next().await {
                return Signal::Stop;
            }
        }
    }
}
