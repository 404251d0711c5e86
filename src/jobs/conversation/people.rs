//! Who may talk to the bot, and who the bot is: the policy (minimum role, question rate) and
//! the caches of `GET /user` and of members' roles.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::OnceCell;

use crate::gitlab::{self, AccessLevel, Author, GitLabClient, ProjectRef};

/// How long a member's role is trusted before it is asked again.
const ROLE_TTL: Duration = Duration::from_secs(300);

/// The lowest role whose commands and questions the bot takes (`REVIEWQ_CONVERSATION_MIN_ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MinRole {
    /// Guest (10).
    Guest,
    /// Reporter (20).
    Reporter,
    /// Developer (30): may push and resolve threads.
    Developer,
    /// Maintainer (40).
    Maintainer,
    /// Owner (50).
    Owner,
}

impl MinRole {
    /// GitLab's access level.
    pub fn level(self) -> AccessLevel {
        match self {
            MinRole::Guest => AccessLevel::GUEST,
            MinRole::Reporter => AccessLevel::REPORTER,
            MinRole::Developer => AccessLevel::DEVELOPER,
            MinRole::Maintainer => AccessLevel::MAINTAINER,
            MinRole::Owner => AccessLevel::OWNER,
        }
    }

    /// The role's name, for replies.
    pub fn name(self) -> &'static str {
        match self {
            MinRole::Guest => "Guest",
            MinRole::Reporter => "Reporter",
            MinRole::Developer => "Developer",
            MinRole::Maintainer => "Maintainer",
            MinRole::Owner => "Owner",
        }
    }
}

/// The conversation settings of a worker, and its caches.
#[derive(Debug, Clone)]
pub struct ConversationPolicy {
    /// Commands and questions from members below this role are refused.
    pub min_role: MinRole,
    /// Questions (and requested rounds) answered per hour, per author and per MR.
    pub questions_per_hour: u32,
    people: Arc<People>,
}

/// A member's role (`None`: no member) in a project, by (project, user id), with when it
/// was asked.
type Roles = HashMap<(String, u64), (Option<AccessLevel>, Instant)>;

#[derive(Debug, Default)]
struct People {
    bot: OnceCell<Author>,
    roles: Mutex<Roles>,
}

impl Default for ConversationPolicy {
    fn default() -> Self {
        Self::new(MinRole::Developer, 10)
    }
}

impl ConversationPolicy {
    /// A policy with empty caches.
    pub fn new(min_role: MinRole, questions_per_hour: u32) -> Self {
        Self {
            min_role,
            questions_per_hour,
            people: Arc::default(),
        }
    }

    /// The token's user, asked once per process.
    ///
    /// # Errors
    /// GitLab's.
    pub async fn bot(&self, gitlab: &GitLabClient) -> gitlab::Result<Author> {
        self.people
            .bot
            .get_or_try_init(|| gitlab.current_user())
            .await
            .cloned()
    }

    /// The user's role in the project, from the cache when asked in the last minutes.
    ///
    /// # Errors
    /// GitLab's.
    pub async fn role(
        &self,
        gitlab: &GitLabClient,
        project: &ProjectRef,
        user_id: u64,
    ) -> gitlab::Result<Option<AccessLevel>> {
        let key = (project.to_string(), user_id);
        if let Some((level, at)) = self.lock().get(&key).copied()
            && at.elapsed() < ROLE_TTL
        {
            return Ok(level);
        }
        let level = gitlab.access_level(project, user_id).await?;
        self.lock().insert(key, (level, Instant::now()));
        Ok(level)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Roles> {
        self.people
            .roles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
