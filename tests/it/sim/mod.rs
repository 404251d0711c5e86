//! The simulated GitLab and GLM servers (used by `reviewq demo`, `bench e2e` and the
//! pipeline tests), driven by the real clients.

mod gitlab;
mod glm;
pub mod helpers;
