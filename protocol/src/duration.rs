//! Durations people type: `900`, `90s`, `15m`, `2h`, `1d` (the CLI's `--ttl`, hearthd's
//! `--auto-lock`).

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

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
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
