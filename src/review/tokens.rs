//! A local, deliberately pessimistic token estimate.
//!
//! GLM's tokenizer is not available offline (the `/tokenizer` endpoint is a network call, covers
//! only some models and is not served on the coding-plan base), and the prompt budget must be
//! decided before any call. So every budget decision uses this estimate and the real count is
//! taken from the provider's `usage` afterwards.
//!
//! The estimate is `ceil(ascii_bytes / 3) + non_ascii_chars`:
//!
//! - ASCII code and English tokenise at roughly 3.5–4.5 characters per token in BPE vocabularies
//!   like GLM's; counting 3 overestimates by 15–50%, which is the safety margin.
//! - A CJK character is at most about one GLM token (often less); other non-ASCII characters
//!   (accents, emoji, U+FFFD from non-UTF-8 input) are 1–2 tokens. Counting 1 per character is
//!   conservative for CJK and roughly right for the rest; the ASCII margin covers the difference
//!   in mixed text. Binary junk, where byte-level fallback would cost more, is skipped before it
//!   reaches a prompt.
//!
//! The estimate is sub-additive (`estimate(a + b) <= estimate(a) + estimate(b)`), which is what
//! lets the chunker add up per-line costs and still bound the whole prompt.

/// ASCII bytes per estimated token; see the module docs for why 3.
const ASCII_CHARS_PER_TOKEN: usize = 3;

/// Estimated tokens for `text`. Never underestimates ordinary source code or prose in practice;
/// see the module docs for the reasoning and the limits.
pub fn estimate_tokens(text: &str) -> usize {
    let mut ascii = 0usize;
    let mut other = 0usize;
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(ASCII_CHARS_PER_TOKEN) + other
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ascii_counts_one_token_per_three_bytes_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("a"), 1);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 2);
    }

    #[test]
    fn non_ascii_characters_count_one_token_each() {
        assert_eq!(estimate_tokens("世界"), 2);
        assert_eq!(estimate_tokens("é\u{fffd}"), 2);
    }

    proptest! {
        #[test]
        fn the_estimate_is_sub_additive(a in any::<String>(), b in any::<String>()) {
            let joined = format!("{a}{b}");
            prop_assert!(estimate_tokens(&joined) <= estimate_tokens(&a) + estimate_tokens(&b));
        }
    }
}
