//! The `ptth-gateway` binary: a thin shell over the `ptth_gateway` library.

use clap::Parser;
use ptth_gateway::config::{init_logging, Cli};
use ptth_gateway::Gateway;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse().merge_file()?;
    init_logging(cli.log_format.as_deref())?;
    let (config, dev) = cli.resolve()?;
    // The gateway serves on its own workers (`--threads`, one runtime per thread); this
    // thread only starts it, waits for signals and reloads the grants.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(config, dev))
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
    if let Some(a) = gateway.listen {
        println!("listen={a}");
    }
    if let Some(a) = gateway.listen_tls {
        println!("listen-tls={a}");
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
