//! Subjects and header values built from names that callers do not control: machine
//! types, instance ids and effect kinds.
//!
//! A NATS subject is a list of tokens separated by `.`; `*` and `>` are wildcards and
//! whitespace ends the subject on the wire. [`token`] makes any name one safe token, so
//! an instance id like `a.b >` cannot publish to another subject than the one meant.
//!
//! # Examples
//!
//! ```
//! use fsm_nats::subject::{is_valid, token};
//!
//! let subject = format!("fsm.Order.{}.Charge", token("eu.o-1 *>"));
//! assert_eq!(subject, "fsm.Order.eu_o-1___.Charge");
//! assert!(is_valid(&subject));
//! assert!(!is_valid("fsm..Order") && !is_valid("fsm.*") && !is_valid(""));
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` cannot appear inside one subject token.
fn breaks_token(c: char) -> bool {
    matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control()
}

/// `name` as one subject token: `.`, `*`, `>`, whitespace and control characters become
/// `_`, and an empty name becomes `_`. Names that are already safe are borrowed as they
/// are. Distinct names may share a token (`a.b` and `a_b`): a subject routes, the
/// headers identify.
///
/// # Examples
///
/// ```
/// assert_eq!(fsm_nats::subject::token("Order"), "Order");
/// assert_eq!(fsm_nats::subject::token("a.b c\t>"), "a_b_c__");
/// assert_eq!(fsm_nats::subject::token(""), "_");
/// ```
pub fn token(name: &str) -> Cow<'_, str> {
    if name.is_empty() {
        Cow::Borrowed("_")
    } else if name.contains(breaks_token) {
        Cow::Owned(name.replace(breaks_token, "_"))
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether `subject` is one a message can be published to: non-empty tokens separated by
/// single dots, no wildcard, no whitespace or control character.
///
/// # Examples
///
/// ```
/// use fsm_nats::subject::is_valid;
/// assert!(is_valid("fsm.effects.Order.Charge"));
/// assert!(!is_valid("fsm.effects.") && !is_valid("fsm.>") && !is_valid("fsm. x"));
/// ```
pub fn is_valid(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|token| !token.is_empty() && !token.contains(breaks_token))
}

/// `value` as a NATS header value: `%`, CR, LF and other control characters are
/// percent-encoded (`%25`, `%0D`, `%0A`), anything else is kept. The encoding is
/// one-to-one, so two instance ids never share a `Nats-Msg-Id`, and an id without those
/// characters is its own header value.
///
/// # Examples
///
/// ```
/// use fsm_nats::subject::header_value;
/// assert_eq!(header_value("Order/o-1/1/0"), "Order/o-1/1/0");
/// assert_eq!(header_value("line\r\nbreak 100%"), "line%0D%0Abreak 100%25");
/// ```
pub fn header_value(value: &str) -> Cow<'_, str> {
    let escape = |c: char| c == '%' || c.is_control();
    if !value.contains(escape) {
        return Cow::Borrowed(value);
    }
    let mut encoded = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if escape(c) {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                let _ = write!(encoded, "%{byte:02X}");
            }
        } else {
            encoded.push(c);
        }
    }
    Cow::Owned(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_valid_in_a_subject() {
        for name in [
            "", ".", "..", "*", ">", " ", "a b", "a\nb", "ä.ö", "o-1", "\u{7f}",
        ] {
            let subject = format!("p.{}.k", token(name));
            assert!(is_valid(&subject), "{name:?} gave {subject:?}");
            assert_eq!(subject.split('.').count(), 3, "{name:?} gave {subject:?}");
        }
    }

    #[test]
    fn header_values_are_one_to_one_and_hold_no_line_break() {
        let ids = ["a\nb", "a%0Ab", "a%b", "a%25b", "a\u{85}b"];
        let encoded: Vec<_> = ids.iter().map(|id| header_value(id)).collect();
        for (i, a) in encoded.iter().enumerate() {
            assert!(!a.contains(['\r', '\n']), "{a:?}");
            for b in &encoded[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
