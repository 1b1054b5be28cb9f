//! The `--ttl DURATION` argument: `900`, `90s`, `15m`, `2h`, `1d`, within the invite limits.

use hearth_protocol::api::{MAX_CODE_TTL_SECS, MAX_INVITE_TTL_SECS};

pub use hearth_protocol::duration::parse_duration;

use crate::render::in_words;

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

    }
}
