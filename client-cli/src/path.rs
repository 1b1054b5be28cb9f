//! Percent-encoding of one URL path segment, for `{group}` in API paths.

/// Encodes `segment` so it is exactly one path segment: RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) are kept and every other byte of its UTF-8 becomes `%XX`.
///
/// Group names are free text ("Thursday circle", "Mütter/Väter"), so a `/` or `?` in one
/// must not change which route the daemon sees.
pub fn encode_segment(segment: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Test-only inverse, to check that nothing is lost.
    fn decode(text: &str) -> Option<String> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    #[test]
    fn keeps_unreserved_and_encodes_the_rest() {
        assert_eq!(encode_segment("abcXYZ019-._~"), "abcXYZ019-._~");
        assert_eq!(encode_segment("Thursday circle"), "Thursday%20circle");
        assert_eq!(encode_segment("a/b?c#d%e"), "a%2Fb%3Fc%23d%25e");
        assert_eq!(encode_segment("Mütter"), "M%C3%BCtter");
        assert_eq!(encode_segment("+&="), "%2B%26%3D");
        assert_eq!(encode_segment(""), "");
    }

    proptest! {
        #[test]
        fn output_is_one_safe_segment_that_decodes_back(s in "\\PC{0,40}") {
            let encoded = encode_segment(&s);
            prop_assert!(encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            prop_assert_eq!(decode(&encoded), Some(s));
        }
    }
}
