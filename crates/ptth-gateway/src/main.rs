//! The `ptth-gateway` binary: a thin shell over the `ptth_gateway` library.

use clap::Parser;
use ptth_gateway::config::{init_logging, Cli};
use ptth_gateway::Gateway;

/// Configuration errors exit with 2, failures while running with 1; either prints the
/// error's chain on one line (never a backtrace, whatever `RUST_BACKTRACE` says).
fn main() -> std::process::ExitCode {
    let settled = Cli::parse().merge_file().and_then(|cli| {
        init_logging(cli.log_format.as_deref())?;
        cli.resolve()
    });
    let (config, dev) = match settled {
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
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the gateway stopped");
            eprintln!("ptth-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: ptth_gateway::config::GatewayConfig,
    dev: Option<ptth_gateway::dev::DevFiles>,
) -> anyhow::Result<()> {
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
    // Print the bound addresses on stdout, machine-readable, for scripts and tests.
    println!("listen={}", gateway.listen);
    if let Some(a) = gateway.listen_tls {
        println!("listen-tls={a}");
    }
    if let Some(a) = gateway.admin {
        println!("admin={a}");
    }
    println!("tunnel={}", gateway.tunnel);
    reload_on_sighup(&gateway).await;
    tracing::info!("shutting down");
    gateway.stop();
    Ok(())
}

/// Serves until SIGTERM or Ctrl-C; on SIGHUP re-reads the grants from the config file.
async fn reload_on_sighup(gateway: &Gateway) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            let stop = shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = hup.recv() => {
                        match ptth_gateway::config::reload_grants(gateway.config())
                            .inspect_err(|_| gateway.reload_failed())
                            .and_then(|g| gateway.reload(g))
                        {
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed; the old grants stay in force"),
                        }
                    }
                }
            }
        }
    }
    shutdown_signal().await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
