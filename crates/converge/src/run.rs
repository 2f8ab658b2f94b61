//! `converge run`: the daemon, with signals, systemd and the HTTP listener.

use std::time::Duration;

use converge_agent::daemon::quiescence::Quiescence;
use converge_agent::daemon::{Daemon, DaemonConfig, FleetConfig, DEFAULT_RESYNC};
use converge_apply::ApplyOptions;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::cli::{Cli, RunArgs};
use crate::exit;

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<u8> {
    let fleet = match cli.published {
        true => Some(FleetConfig {
            consul: cli.consul("--published")?,
            follow: cli.follow()?,
            report_ttl: args.report_ttl,
        }),
        false => None,
    };
    let config = DaemonConfig {
        fleet,
        inputs: cli.inputs(),
        node: cli.node()?,
        catalog: cli.catalog_from()?,
        quiescence: Quiescence::new(args.wait_min, args.wait_max),
        resync: if args.resync.is_zero() {
            DEFAULT_RESYNC
        } else {
            args.resync
        },
        apply: ApplyOptions {
            lock_timeout: Duration::from_secs(args.lock_timeout),
            ..ApplyOptions::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(config, args))?;
    Ok(exit::OK)
}

// Long on purpose: it wires the daemon, the HTTP listener, the signal
// handlers and systemd's notifications together in the order they start
// and stop; each piece is a few lines and reads best where it is started.
async fn serve(config: DaemonConfig, args: &RunArgs) -> anyhow::Result<()> {
    let daemon = Daemon::new(config);
    let board = daemon.board();
    let control = daemon.control();
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %args.listen, "status listener up");
    let http = tokio::spawn(converge_agent::daemon::http::serve(
        listener,
        board,
        control.clone(),
        stop_rx.clone(),
    ));

    // READY=1 and STOPPING=1 go out under one lock, so that no pass
    // ending while the stop is requested can tell systemd the service is
    // ready again after it was told the service stops.
    let stopped = std::sync::Arc::new(std::sync::Mutex::new(false));
    let stopping = stopped.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading manifests, templates and the Consul settings files");
                    let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
                    control.reload();
                }
            }
        }
        tracing::info!("stop requested; finishing any apply in flight");
        {
            let mut stopped = stopping.lock().unwrap_or_else(|e| e.into_inner());
            *stopped = true;
            let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
        }
        let _ = stop_tx.send(true);
    });

    let mut watchdog = 0;
    if sd_notify::watchdog_enabled(false, &mut watchdog) && watchdog > 0 {
        let every = Duration::from_micros(watchdog / 2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            }
        });
    }

    daemon
        .run(stop_rx, move |board| {
            let stopped = stopped.lock().unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
            let s = board.status();
            let line = if s.converged {
                "converged".to_string()
            } else {
                let held = s.backends.values().filter(|b| b.held.is_some()).count();
                format!(
                    "not converged: {} held, input error: {}, source error: {}",
                    held,
                    s.input_error.is_some(),
                    s.source_error.is_some()
                )
            };
            let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&line)]);
        })
        .await?;
    let _ = http.await;
    Ok(())
}
