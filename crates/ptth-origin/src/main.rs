//! The `ptth-origin` binary: a thin shell over the `ptth_origin` library.

use clap::Parser;
use ptth_origin::config::{init_logging, Cli, Serve};
use ptth_origin::service::Hello;
use ptth_origin::Origin;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse().merge_file()?;
    init_logging(cli.log_format.as_deref())?;
    let threads = cli.threads;
    let (config, serve) = cli.resolve()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = threads {
        runtime.worker_threads(n);
    }
    runtime.build()?.block_on(run(config, serve))
}

async fn run(config: ptth_origin::OriginConfig, serve: Serve) -> anyhow::Result<()> {
    let origin = Origin::new(config)?;
    match serve {
        Serve::Hello => origin.serve(Hello::new(), shutdown_signal()).await?,
        Serve::Upstream(routes) => origin.serve(routes, shutdown_signal()).await?,
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
