//! The `ptth-origin` binary: a thin shell over the `ptth_origin` library.

use clap::Parser;
use ptth_origin::config::{init_logging, Cli, Serve};
use ptth_origin::service::{Hello, Proxy};
use ptth_origin::Origin;

/// Configuration errors exit with 2, failures while running with 1; either prints the
/// error's chain on one line (never a backtrace, whatever `RUST_BACKTRACE` says).
fn main() -> std::process::ExitCode {
    let settled = Cli::parse().merge_file().and_then(|cli| {
        init_logging(cli.log_format.as_deref())?;
        let threads = cli.threads;
        let (config, serve) = cli.resolve()?;
        // Checked here, not when the runtime starts, so a bad TLS file is a config error.
        let origin = Origin::new(config)?;
        Ok((origin, serve, threads))
    });
    let (origin, serve, threads) = match settled {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ptth-origin: configuration error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = threads {
        runtime.worker_threads(n);
    }
    let ran = runtime
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

async fn run(origin: Origin, serve: Serve) -> anyhow::Result<()> {
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
