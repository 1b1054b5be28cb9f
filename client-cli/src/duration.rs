//! Parsing of the `--ttl DURATION` argument: `900`, `90s`, `15m`, `2h`, `1d`.

use hearth_protocol::api::{MAX_CODE_TTL_SECS, MAX_INVITE_TTL_SECS};

use crate::render::in_words;

/// Shown with every rejected duration so the fix is obvious.
const EXPECTED: &str = "expected a number of seconds, or a number followed by s, m, h or d, e.g. `900`, `90s`, `15m`, `2h` or `1d`";

/// Parses a duration into seconds. Syntax only: any value that fits in a `u64` is accepted.
///
/// The grammar is deliberately strict (ASCII digits, then at most one lowercase unit, no
/// spaces or signs) so that a typo is an error rather than a surprising lifetime.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let (digits, unit_secs) = match text.as_bytes().last() {
        Some(b's') => (&text[..text.len() - 1], 1),
        Some(b'm') => (&text[..text.len() - 1], 60),
        Some(b'h') => (&text[..text.len() - 1], 60 * 60),
        Some(b'd') => (&text[..text.len() - 1], 24 * 60 * 60),
        _ => (text, 1),
    };
    // `u64::from_str` alone would also take a leading `+`.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a duration: {EXPECTED}"));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .ok_or_else(|| format!("`{text}` is far too long a duration"))
}

/// The clap value parser for `--ttl`: a duration the daemon will accept as an invite lifetime.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let secs = parse_duration(text)?;
    if secs == 0 {
        return Err("an invite must live for at least one second, e.g. `15m`".to_owned());
    }
    if secs > MAX_INVITE_TTL_SECS {
        return Err(format!(
            "an invite may live for at most {}d; `{text}` is longer",
            MAX_INVITE_TTL_SECS / (24 * 60 * 60)
        ));
    }
    Ok(secs)
}

/// The check `--ttl` gets with `--code`, after [`parse_ttl`]: a spoken code is for the room
/// you are in, so it lives at most [`MAX_CODE_TTL_SECS`].
pub fn check_code_ttl(secs: u64) -> Result<u64, String> {
    if secs > MAX_CODE_TTL_SECS {
        return Err(format!(
            "a spoken code (--code) may live for at most {}h, as it is for the room you are \
             in; --ttl asks for {}. Give a shorter --ttl, e.g. `30m`, or leave out --code for an \
             invite token, which may live for up to {}d",
            MAX_CODE_TTL_SECS / (60 * 60),
            // `in_words` rounds to the minute, which could make 3601 s read as "1 hour".
            if secs.is_multiple_of(60) {
                in_words(secs)
            } else {
                format!("{secs} seconds")
            },
            MAX_INVITE_TTL_SECS / (24 * 60 * 60)
        ));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("900"), Ok(900));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86400));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("015m"), Ok(900));
    }

    #[test]
    fn rejects_everything_else_with_an_example() {
        for bad in [
            "", "s", "m", "+15m", "-5", "15 m", " 15m", "15m ", "15M", "1.5h", "1h30m", "15min",
            "2w", "1e3", "ten", "15mm", "١٥m",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("15m"), "{bad}: {err}");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(parse_duration("18446744073709551615").is_ok());
        assert!(parse_duration("18446744073709551616").is_err());
        assert!(parse_duration("18446744073709551615d").is_err());
    }

    #[test]
    fn ttl_is_bounded_by_the_protocol_limits() {
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("7d"), Ok(MAX_INVITE_TTL_SECS));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("8d").unwrap_err().contains("7d"));
        assert!(parse_ttl("1x").unwrap_err().contains("15m"));
    }

    #[test]
    fn code_ttl_is_at_most_an_hour() {
        assert_eq!(check_code_ttl(60), Ok(60));
        assert_eq!(check_code_ttl(MAX_CODE_TTL_SECS), Ok(MAX_CODE_TTL_SECS));
        let err = check_code_ttl(MAX_CODE_TTL_SECS + 1).unwrap_err();
        assert!(err.contains("at most 1h"), "{err}");
        assert!(err.contains("leave out --code"), "{err}");
        assert!(
            check_code_ttl(7200)
                .unwrap_err()
                .contains("asks for 2 hours")
        );
        assert!(err.contains("asks for 3601 seconds"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
            let _ = parse_ttl(&text);
        }

        #[test]
        fn never_panics_on_near_misses(text in "[0-9+\\- ]{0,22}[smhdSMHDx]?[smhd]?") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn round_trips_every_unit(n in 0u64..=1_000_000_000u64, unit in 0usize..5) {
            let (suffix, scale) = [("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)][unit];
            prop_assert_eq!(parse_duration(&format!("{n}{suffix}")), Ok(n * scale));
        }
    }
}
