//! Reading people's Markdown (MR descriptions, replies to the bot) for its prose: code is
//! not what they said.

/// The lines of `text` outside fenced code blocks (```` ``` ```` or `~~~`), fence lines
/// themselves left out. An unclosed fence runs to the end.
pub(crate) fn lines_outside_fences(text: &str) -> impl Iterator<Item = &str> {
    let mut in_fence = false;
    text.lines().filter(move |line| {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            return false;
        }
        !in_fence
    })
}

/// The pieces of one line outside inline code spans: every other backtick-delimited segment.
pub(crate) fn outside_inline_code(line: &str) -> impl Iterator<Item = &str> {
    line.split('`').step_by(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_blocks_and_their_fences_are_left_out() {
        let text = "before\n```rust\nlet x = 1;\n```\nafter\n  ~~~\ninside\n";
        assert_eq!(
            lines_outside_fences(text).collect::<Vec<_>>(),
            ["before", "after"]
        );
    }

    #[test]
    fn inline_code_spans_are_left_out() {
        assert_eq!(
            outside_inline_code("use `x.unwrap()` here, not `y`").collect::<Vec<_>>(),
            ["use ", " here, not ", ""]
        );
    }
}
