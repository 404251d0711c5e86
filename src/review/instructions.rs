//! A project's custom review instructions ([`Instructions`]): validated text that goes into
//! every prompt of the review, read from `.reviewq.toml` by [`settings`](crate::review::settings)
//! and rendered by [`prompt`](crate::review::prompt).

/// Longest accepted `instructions`, in characters. They go into every prompt of the review, so
/// they cost tokens on every chunk and crowd out the diff; 4,000 characters is a page of house
/// rules.
pub const MAX_INSTRUCTIONS_CHARS: usize = 4_000;

/// Custom review instructions: 1 to [`MAX_INSTRUCTIONS_CHARS`] characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instructions(String);

/// Text [`Instructions::parse`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInstructions {
    /// Nothing but whitespace.
    #[error("the instructions are empty")]
    Empty,
    /// Longer than [`MAX_INSTRUCTIONS_CHARS`].
    #[error(
        "the instructions are {0} characters long; at most {MAX_INSTRUCTIONS_CHARS} are accepted"
    )]
    TooLong(usize),
}

impl Instructions {
    /// Validates instructions, trimming surrounding whitespace.
    ///
    /// # Errors
    /// [`InvalidInstructions`] when empty or too long.
    pub fn parse(text: &str) -> Result<Instructions, InvalidInstructions> {
        let text = text.trim();
        let chars = text.chars().count();
        if chars == 0 {
            return Err(InvalidInstructions::Empty);
        }
        if chars > MAX_INSTRUCTIONS_CHARS {
            return Err(InvalidInstructions::TooLong(chars));
        }
        Ok(Instructions(text.to_owned()))
    }

    /// The instructions' text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
