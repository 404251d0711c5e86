//! References to merge requests as users type them: `group/project:42`, `123!42`, or a
//! merge request URL; several may be comma-separated.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A GitLab project: a numeric id or a full path such as `group/sub/project`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Project {
    /// The project's numeric id.
    Id(u64),
    /// The project's full path, namespaces included.
    Path(String),
}

/// Why a REF did not parse. The message names the bad value and the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid merge request reference {value:?}: {reason}; expected PROJECT:IID, PROJECT!IID or https://HOST/group/project/-/merge_requests/IID"
)]
pub struct InvalidRef {
    /// What the user typed.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidRef {
    fn new(value: &str, reason: impl Into<String>) -> Self {
        Self {
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Project {
    /// Parses a numeric id or a namespaced path. Path segments follow GitLab's rules:
    /// letters, digits, `_`, `-` and `.`, not starting with `-` or `.`.
    ///
    /// # Errors
    /// A message saying what is wrong with `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the project is empty".into());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u64>() {
                Ok(0) | Err(_) => Err(format!("project id {s} is out of range")),
                Ok(id) => Ok(Self::Id(id)),
            };
        }
        for segment in s.split('/') {
            if segment.is_empty() {
                return Err(format!("project path {s:?} has an empty segment"));
            }
            if segment.starts_with(['-', '.']) {
                return Err(format!(
                    "project path segment {segment:?} starts with '-' or '.'"
                ));
            }
            if let Some(bad) = segment
                .chars()
                .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
            {
                return Err(format!("project path {s:?} contains {bad:?}"));
            }
        }
        Ok(Self::Path(s.to_owned()))
    }
}

impl fmt::Display for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Path(path) => f.write_str(path),
        }
    }
}

impl TryFrom<String> for Project {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Project> for String {
    fn from(p: Project) -> Self {
        p.to_string()
    }
}

/// A merge request: its project and its project-scoped IID (the number in the URL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MrRef {
    /// The project.
    pub project: Project,
    /// The merge request's IID within the project.
    pub iid: u64,
    /// The host, when the reference was a URL (checked against the configured GitLab).
    #[serde(skip)]
    pub host: Option<String>,
}

impl fmt::Display for MrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}!{}", self.project, self.iid)
    }
}

fn parse_iid(whole: &str, s: &str) -> Result<u64, InvalidRef> {
    match s.parse::<u64>() {
        Ok(iid) if iid > 0 => Ok(iid),
        _ => Err(InvalidRef::new(
            whole,
            format!("IID {s:?} is not a positive integer"),
        )),
    }
}

impl FromStr for MrRef {
    type Err = InvalidRef;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let s = raw.trim();
        if s.starts_with("http://") || s.starts_with("https://") {
            return parse_url(raw, s);
        }
        let Some(split) = s.rfind([':', '!']) else {
            return Err(InvalidRef::new(raw, "no ':' or '!' before the IID"));
        };
        let (project, iid) = (&s[..split], &s[split + 1..]);
        let project = Project::parse(project).map_err(|reason| InvalidRef::new(raw, reason))?;
        Ok(Self {
            project,
            iid: parse_iid(raw, iid)?,
            host: None,
        })
    }
}

fn parse_url(raw: &str, s: &str) -> Result<MrRef, InvalidRef> {
    let url = url::Url::parse(s).map_err(|e| InvalidRef::new(raw, format!("not a URL: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| InvalidRef::new(raw, "the URL has no host"))?;
    let path = url.path().trim_matches('/');
    let Some((project, rest)) = path.split_once("/-/merge_requests/") else {
        return Err(InvalidRef::new(
            raw,
            "the URL path has no /-/merge_requests/IID",
        ));
    };
    // Tolerate tabs such as /diffs or /commits after the IID.
    let iid = rest.split('/').next().unwrap_or_default();
    let project = Project::parse(project).map_err(|reason| InvalidRef::new(raw, reason))?;
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Ok(MrRef {
        project,
        iid: parse_iid(raw, iid)?,
        host: Some(host),
    })
}

/// Parses every REF argument, each of which may hold several comma-separated refs.
/// Duplicates are dropped, keeping the first occurrence's order.
///
/// # Errors
/// The first invalid reference.
pub fn parse_refs<S: AsRef<str>>(args: &[S]) -> Result<Vec<MrRef>, InvalidRef> {
    let mut refs: Vec<MrRef> = Vec::new();
    for arg in args {
        let arg = arg.as_ref();
        if arg.trim().is_empty() {
            return Err(InvalidRef::new(arg, "it is empty"));
        }
        for part in arg.split(',') {
            if part.trim().is_empty() {
                return Err(InvalidRef::new(arg, "it has an empty item between commas"));
            }
            let r: MrRef = part.parse()?;
            if !refs
                .iter()
                .any(|seen| seen.project == r.project && seen.iid == r.iid)
            {
                refs.push(r);
            }
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Project {
        Project::Path(s.to_owned())
    }

    #[test]
    fn colon_and_bang_forms_parse_with_paths_and_ids() {
        let r: MrRef = "group/sub/project:42".parse().unwrap();
        assert_eq!((r.project, r.iid), (path("group/sub/project"), 42));
        let r: MrRef = "123!7".parse().unwrap();
        assert_eq!((r.project, r.iid), (Project::Id(123), 7));
        let r: MrRef = " my.group/my-project_1!9 ".parse().unwrap();
        assert_eq!(r.project, path("my.group/my-project_1"));
    }

    #[test]
    fn merge_request_urls_parse_with_host_and_trailing_tabs() {
        let r: MrRef =
            "https://gitlab.example.com/group/project/-/merge_requests/42/diffs?x=1#note_3"
                .parse()
                .unwrap();
        assert_eq!(r.project, path("group/project"));
        assert_eq!(r.iid, 42);
        assert_eq!(r.host.as_deref(), Some("gitlab.example.com"));
        let r: MrRef = "http://127.0.0.1:8080/a/b/c/-/merge_requests/1"
            .parse()
            .unwrap();
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(r.project, path("a/b/c"));
    }

    #[test]
    fn comma_separated_refs_expand_and_duplicates_are_dropped() {
        let refs = parse_refs(&["p:1,p:2", "p!1", "q:3"]).unwrap();
        let shown: Vec<String> = refs.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["p!1", "p!2", "q!3"]);
    }

    #[test]
    fn bad_refs_name_the_value_and_the_problem() {
        for (bad, why) in [
            ("group/project", "no ':' or '!'"),
            ("group/project:0", "IID \"0\""),
            ("group/project:abc", "IID \"abc\""),
            (":4", "project is empty"),
            ("group//project:4", "empty segment"),
            ("group/pro ject:4", "contains ' '"),
            ("-group/project:4", "starts with"),
            (
                "https://gitlab.com/group/project/issues/4",
                "/-/merge_requests/",
            ),
            ("0:4", "out of range"),
        ] {
            let err = bad.parse::<MrRef>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = parse_refs(&["p:1,,p:2"]).unwrap_err().to_string();
        assert!(err.contains("empty item"), "{err}");
    }

    #[test]
    fn projects_round_trip_through_strings() {
        for s in ["42", "group/project"] {
            let p = Project::parse(s).unwrap();
            let back: String = p.clone().into();
            assert_eq!(back, s);
            assert_eq!(Project::try_from(back).unwrap(), p);
        }
    }
}
