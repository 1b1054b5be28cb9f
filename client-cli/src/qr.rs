//! An invite token as a QR code, drawn in the terminal with Unicode half blocks.
//!
//! Each module (QR "pixel") is one column wide and half a line tall, so it comes out square
//! on the usual terminal font, whose cells are about twice as tall as they are wide; two
//! rows of modules share a line (`▀`, `▄`, `█` or a space). A token of 300 characters (a
//! few addresses) then takes 77 columns and 39 lines.
//!
//! The code is drawn black on white whatever the terminal's own colours are: a phone
//! camera looks for dark modules on a light ground, and many scanners do not read the
//! light-on-dark picture a dark terminal theme would otherwise give.

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// Modules of light margin around the code on each side, as the QR standard asks.
pub const QUIET_ZONE: usize = 4;

/// Up to this many columns wide, the code uses error correction level M (15% of the code
/// may be unreadable); a longer token falls back to L (7%) to stay within a usual
/// 80-column terminal.
const PREFERRED_MAX_COLUMNS: usize = 80;

/// Black text (`30`) on a bright white ground (`107`); `0` resets.
const BLACK_ON_WHITE: &str = "\u{1b}[30;107m";
const RESET: &str = "\u{1b}[0m";

/// `text` as a QR code in black on white, one string per terminal line (without newlines),
/// quiet zone included; `None` when `text` is too long for any QR code.
pub fn lines(text: &str) -> Option<Vec<String>> {
    let code = encode(text)?;
    let picture = code
        .render::<Dense1x2>()
        .quiet_zone(true)
        .module_dimensions(1, 1)
        .build();
    Some(
        picture
            .lines()
            .map(|line| format!("{BLACK_ON_WHITE}{line}{RESET}"))
            .collect(),
    )
}

/// The QR code for `text`: level M when it fits the preferred width, else level L.
fn encode(text: &str) -> Option<QrCode> {
    let fits = |code: &QrCode| code.width() + 2 * QUIET_ZONE <= PREFERRED_MAX_COLUMNS;
    match QrCode::with_error_correction_level(text, EcLevel::M) {
        Ok(code) if fits(&code) => Some(code),
        _ => QrCode::with_error_correction_level(text, EcLevel::L).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcode::Color;

    /// A token of the usual length (278 characters: the prefix, then lowercase base32 of
    /// about 170 bytes, which holds three or four addresses).
    fn token(seed: char) -> String {
        let body: String = std::iter::repeat_n(seed, 20)
            .chain("abcdefghijklmnopqrstuvwxyz234567".chars().cycle().take(250))
            .collect();
        format!("hearth1-{body}")
    }

    /// The picture without its colour codes, as a grid of modules: `true` is dark. Each
    /// character holds the module above (upper half) and the one below (lower half).
    fn modules(lines: &[String]) -> Vec<Vec<bool>> {
        let mut rows = Vec::new();
        for line in lines {
            let inner = line
                .strip_prefix(BLACK_ON_WHITE)
                .and_then(|l| l.strip_suffix(RESET))
                .expect("every line is wrapped in the colours");
            let halves: Vec<(bool, bool)> = inner
                .chars()
                .map(|c| match c {
                    ' ' => (false, false),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    '█' => (true, true),
                    other => panic!("unexpected character {other:?}"),
                })
                .collect();
            rows.push(halves.iter().map(|h| h.0).collect());
            rows.push(halves.iter().map(|h| h.1).collect());
        }
        rows
    }

    #[test]
    fn the_picture_is_the_code_with_a_quiet_zone_all_round() {
        let text = token('q');
        let code = encode(&text).unwrap();
        let n = code.width();
        let lines = lines(&text).unwrap();
        let side = n + 2 * QUIET_ZONE;
        // Two module rows a line; an odd last row shares its line with white.
        assert_eq!(lines.len(), side.div_ceil(2));
        let grid = modules(&lines);
        assert_eq!(grid.len(), lines.len() * 2);
        assert!(grid.iter().all(|row| row.len() == side), "not square");

        let colors = code.to_colors();
        for (y, row) in grid.iter().enumerate() {
            for (x, &dark) in row.iter().enumerate() {
                let inside = (QUIET_ZONE..QUIET_ZONE + n).contains(&x)
                    && (QUIET_ZONE..QUIET_ZONE + n).contains(&y);
                let expected =
                    inside && colors[(y - QUIET_ZONE) * n + (x - QUIET_ZONE)] == Color::Dark;
                assert_eq!(dark, expected, "module ({x}, {y})");
            }
        }
        // The three finder patterns start exactly where the quiet zone ends.
        assert!(grid[QUIET_ZONE][QUIET_ZONE]);
        assert!(grid[QUIET_ZONE][QUIET_ZONE + n - 1]);
        assert!(grid[QUIET_ZONE + n - 1][QUIET_ZONE]);
    }

    #[test]
    fn a_usual_token_fits_an_80_column_terminal() {
        let lines = lines(&token('x')).unwrap();
        let width = modules(&lines)[0].len();
        assert!(width <= PREFERRED_MAX_COLUMNS, "{width} columns");
        assert!(lines.len() <= 45, "{} lines", lines.len());
    }

    #[test]
    fn different_tokens_give_different_pictures() {
        assert_ne!(lines(&token('a')), lines(&token('b')));
        assert_eq!(lines(&token('a')), lines(&token('a')));
    }

    #[test]
    fn long_tokens_fall_back_to_level_l_and_then_to_nothing() {
        // Too long for level M within 80 columns, fine for level L.
        let long = format!("hearth1-{}", "a".repeat(440));
        let code = encode(&long).unwrap();
        assert_eq!(code.error_correction_level(), EcLevel::L);
        assert_eq!(
            encode(&token('x')).unwrap().error_correction_level(),
            EcLevel::M
        );
        // More than any QR code holds.
        assert_eq!(lines(&"a".repeat(4096)), None);
    }
}
