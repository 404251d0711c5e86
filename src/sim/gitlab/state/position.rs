//! A note's `position`, checked the way GitLab checks it before it stores an inline comment.

use serde_json::Value;

use super::{ApiError, Mr, StoredPosition};
use crate::sim::gitlab::diff::LineKind;

/// Checks a `position` the way GitLab does when it builds the note's line code, and returns
/// it as stored. Rules (reference A6):
/// - `position_type` is required and one of `text`, `image`, `file`;
/// - the three SHAs are required and must be those of the latest diff version;
/// - `old_path`/`new_path` must name one file of that version exactly as GitLab lists it
///   (added and deleted files: both paths equal);
/// - for `text`: an added line carries `new_line` only, a removed line `old_line` only, a
///   context line both, and the pair must be a line inside one of the file's hunks.
///
/// Any failure of the last two groups is the `line_code` 400. A line number of 0 is answered
/// with a 500, as GitLab has been seen to do.
pub(super) fn validate_position(mr: &Mr, position: &Value) -> Result<StoredPosition, ApiError> {
    let Some(object) = position.as_object() else {
        return Err(ApiError::grape("position is invalid"));
    };
    let text = |name: &str| -> Result<String, ApiError> {
        match object.get(name) {
            None | Some(Value::Null) => {
                Err(ApiError::grape(&format!("position[{name}] is missing")))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::grape(&format!("position[{name}] is invalid"))),
        }
    };
    let line = |name: &str| -> Result<Option<u32>, ApiError> {
        let invalid = || ApiError::grape(&format!("position[{name}] is invalid"));
        let number = match object.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(invalid)?,
            Some(Value::String(s)) if s.is_empty() => return Ok(None),
            Some(Value::String(s)) => s.parse::<u64>().map_err(|_| invalid())?,
            Some(_) => return Err(invalid()),
        };
        if number == 0 {
            return Err(ApiError::internal());
        }
        u32::try_from(number).map(Some).map_err(|_| invalid())
    };
    let position_type = text("position_type")?;
    if !matches!(position_type.as_str(), "text" | "image" | "file") {
        return Err(ApiError::grape(
            "position[position_type] does not have a valid value",
        ));
    }
    let stored = StoredPosition {
        base_sha: text("base_sha")?,
        start_sha: text("start_sha")?,
        head_sha: text("head_sha")?,
        old_path: text("old_path").unwrap_or_default(),
        new_path: text("new_path").unwrap_or_default(),
        old_line: line("old_line")?,
        new_line: line("new_line")?,
        position_type,
    };
    let latest = mr.latest();
    if stored.base_sha != latest.base_sha
        || stored.start_sha != latest.start_sha
        || stored.head_sha != latest.head_sha
    {
        return Err(ApiError::line_code());
    }
    let file = latest
        .files
        .iter()
        .find(|f| f.spec.old_path == stored.old_path && f.spec.new_path == stored.new_path)
        .ok_or_else(ApiError::line_code)?;
    match stored.position_type.as_str() {
        "file" => Ok(stored),
        "image" => Err(ApiError::message(
            400,
            "400 Bad request - Note {:position=>[\"image positions are not supported by the simulated GitLab\"]}",
        )),
        _ => {
            let found = file.lines.find(stored.old_line, stored.new_line);
            // `find` matches the exact (old, new) pair, so the kind rules hold by
            // construction; the match below only documents them.
            match found.map(|l| l.kind) {
                Some(LineKind::Added | LineKind::Removed | LineKind::Context) => Ok(stored),
                None => Err(ApiError::line_code()),
            }
        }
    }
}
