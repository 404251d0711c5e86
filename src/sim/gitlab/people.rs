//! What tests do as people on the simulated GitLab: give someone a role in a project, comment
//! on a line, and read back the Note Hook GitLab would deliver and the award emoji given.

use serde_json::Value;

use super::{FakeGitLab, StoredNote, state::StoredAward};
use crate::sim::Error;

/// GitLab's role levels, for [`FakeGitLab::set_member`].
pub mod access {
    /// Guest.
    pub const GUEST: u32 = 10;
    /// Reporter.
    pub const REPORTER: u32 = 20;
    /// Developer.
    pub const DEVELOPER: u32 = 30;
    /// Maintainer.
    pub const MAINTAINER: u32 = 40;
}

impl FakeGitLab {
    /// Makes `username` a member of `project` with `access_level` ([`access`]); anyone else
    /// is no member (the members API answers 404).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`] (with iid 0) for an unknown project.
    pub fn set_member(
        &self,
        project: &str,
        username: &str,
        access_level: u32,
    ) -> Result<(), Error> {
        self.state().set_member(project, username, access_level)
    }

    /// `author` starts an inline thread on new-side line `line` of `path` in the latest
    /// version (as a human commenting on the diff).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`].
    pub fn seed_diff_note(
        &self,
        project: &str,
        iid: u64,
        author: &str,
        body: &str,
        (path, line): (&str, u32),
    ) -> Result<StoredNote, Error> {
        self.state()
            .seed_diff_note(project, iid, author, body, (path, line))
    }

    /// The Note Hook body GitLab would deliver for the note (`action`: `create`, `update`).
    ///
    /// # Errors
    /// [`Error::UnknownMergeRequest`], [`Error::UnknownDiscussion`] for an unknown note.
    pub fn note_hook(
        &self,
        project: &str,
        iid: u64,
        note_id: u64,
        action: &str,
    ) -> Result<Value, Error> {
        let base = self.base_url().to_owned();
        self.state().note_hook(project, iid, note_id, action, &base)
    }

    /// Every award emoji given on the instance, oldest first.
    pub fn awards(&self) -> Vec<StoredAward> {
        self.state().people.awards.clone()
    }
}
