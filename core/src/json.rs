//! Limits on the JSON that clients and backends hand in to be stored and passed on.
//!
//! Publication data is kept verbatim (a `RawValue`, whose parser skips nested values without
//! any depth limit), stored in history and delivered to every subscriber, so a payload nested
//! 30,000 levels deep would crash every subscriber with a recursive parser (most browsers' and
//! SDKs' `JSON.parse`, serde's default). Every input that is stored or passed on (publication
//! data on every transport, presence data) is refused past [`MAX_DEPTH`].

/// Deepest nesting of arrays and objects accepted in stored data: `{"a":[1]}` is 2 deep, a
/// scalar 0. Well below the 128 levels serde_json parses by default, so whatever is accepted
/// parses everywhere.
pub const MAX_DEPTH: usize = 64;

/// The nesting depth of `json`, which must be valid JSON text (as a parsed `RawValue` is),
/// counted without recursion in one pass; it stops counting past `limit` and returns
/// `limit + 1` then.
pub fn depth_up_to(json: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return limit + 1;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether `json` (valid JSON text) nests deeper than [`MAX_DEPTH`].
pub fn too_deep(json: &[u8]) -> bool {
    depth_up_to(json, MAX_DEPTH) > MAX_DEPTH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert_eq!(depth_up_to(b"1", 10), 0);
        assert_eq!(depth_up_to(br#"{"a":[1,{"b":2}],"c":[]}"#, 10), 3);
        assert_eq!(depth_up_to(br#"["[[[[", "\"[[[", "\\"]"#, 10), 1);
        assert_eq!(depth_up_to(br#"{"k\"{[":"}]{["}"#, 10), 1);
    }

    #[test]
    fn the_limit_is_inclusive_and_deep_input_stops_early() {
        assert!(!too_deep(nested(MAX_DEPTH).as_bytes()));
        assert!(too_deep(nested(MAX_DEPTH + 1).as_bytes()));
        assert_eq!(depth_up_to(nested(30_000).as_bytes(), MAX_DEPTH), MAX_DEPTH + 1);
    }
}
