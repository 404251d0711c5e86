//! `reviewq db`: local mode's private PostgreSQL cluster.

use std::process::ExitCode;

use clap::Subcommand;

/// `reviewq db` actions.
#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Where the local cluster is and whether it runs.
    Status,
    /// Start it (it also starts on first use).
    Start,
    /// Stop it.
    Stop,
}

pub(super) fn local_db(action: DbAction) -> anyhow::Result<ExitCode> {
    let cluster = crate::config::local_cluster_config()?;
    match action {
        DbAction::Status => {
            let running = cluster.is_running();
            println!(
                "local cluster: {} ({})
URL: {}",
                crate::config::describe_local_cluster(&cluster),
                if running { "running" } else { "stopped" },
                cluster.url()
            );
        }
        DbAction::Start => {
            cluster.start()?;
            println!("local cluster running at {}", cluster.url());
        }
        DbAction::Stop => {
            cluster.stop()?;
            println!("local cluster stopped");
        }
    }
    Ok(ExitCode::SUCCESS)
}
