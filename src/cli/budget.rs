//! `reviewq budget`: daily token budgets, listed with today's use, set or cleared.

use std::{io::Write, process::ExitCode};

use clap::{Args, Subcommand};

use crate::config::{DbArgs, UsageError};

/// Arguments of `budget`.
#[derive(Debug, Args)]
pub struct BudgetArgs {
    #[command(subcommand)]
    pub action: Option<BudgetAction>,

    /// The fleet-wide budget workers use (shown in the list; set it on the workers).
    #[arg(long, env = "REVIEWQ_DAILY_TOKEN_BUDGET", value_parser = clap::value_parser!(u64).range(1..))]
    pub daily_token_budget: Option<u64>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `reviewq budget` actions.
#[derive(Debug, Subcommand)]
pub enum BudgetAction {
    /// Set a project's daily token budget (reviews waiting for a budget look again at once).
    Set {
        /// The project as reviews name it: `group/project` or its numeric id.
        project: String,
        /// Tokens per UTC day (0 stops its reviews from calling the LLM).
        tokens: u64,
    },
    /// Remove a project's budget.
    Clear {
        /// The project.
        project: String,
    },
}

pub(super) async fn budget(db: &DbArgs, args: BudgetArgs) -> anyhow::Result<ExitCode> {
    let project = |raw: &str| {
        crate::mr_ref::Project::parse(raw)
            .map(|p| p.to_string())
            .map_err(|e| UsageError(format!("invalid project {raw:?}: {e}")))
    };
    let action = match &args.action {
        Some(BudgetAction::Set { project: p, tokens }) => Some((project(p)?, Some(*tokens))),
        Some(BudgetAction::Clear { project: p }) => Some((project(p)?, None)),
        None => None,
    };
    let pool = db.pool(2).await?;
    if let Some((project, tokens)) = action {
        let woken = crate::spend::set_project_budget(&pool, &project, tokens).await?;
        match tokens {
            Some(t) => println!("project {project}: daily budget {t} tokens"),
            None => println!("project {project}: no budget"),
        }
        if woken > 0 {
            println!("{woken} waiting jobs look at their budget again now");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let policy = crate::spend::SpendPolicy {
        daily_tokens: args.daily_token_budget,
        ..crate::spend::SpendPolicy::default()
    };
    let rows = crate::spend::budgets(&pool, &policy).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<40}  {:>14}  {:>14}",
            "PROJECT", "DAILY BUDGET", "USED TODAY"
        )?;
        for r in rows {
            writeln!(
                out,
                "{:<40}  {:>14}  {:>14}",
                if r.project == "*" {
                    "* (fleet, REVIEWQ_DAILY_TOKEN_BUDGET)".to_owned()
                } else {
                    r.project
                },
                r.daily_tokens
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "none".into()),
                r.used_today
            )?;
        }
        writeln!(out, "(a day is a UTC calendar day)")?;
    }
    Ok(ExitCode::SUCCESS)
}
