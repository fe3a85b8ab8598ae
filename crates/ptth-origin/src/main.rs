//! The `ptth-origin` binary: a thin shell over the `ptth_origin` library.

use clap::Parser;
use ptth_origin::config::{init_logging, Cli, Serve};
use ptth_origin::service::{Hello, Proxy};
use ptth_origin::Origin;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format.clone().as_deref())?;
    let (config, serve) = cli.resolve()?;
    let origin = Origin::new(config)?;
    match serve {
        Serve::Hello => origin.serve(Hello::new(), shutdown_signal()).await?,
        Serve::Upstream(uri) => origin.serve(Proxy::new(uri)?, shutdown_signal()).await?,
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
