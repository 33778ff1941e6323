//! The forms a password takes on its way through connection strings and
//! output, for the tests that prove none of them shows: percent-encoded in
//! URLs, escaped in libpq keyword values, escaped in JSON and `Debug`
//! output, and as the list of bytes lapin's `Debug` prints for its login
//! frame.

/// Every byte but the unreserved ones (RFC 3986) as `%XX`.
pub fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A bare libpq keyword value: spaces, quotes and backslashes escaped.
pub fn libpq_bare(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if matches!(c, ' ' | '\'' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A single-quoted libpq keyword value, quotes included.
pub fn libpq_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The text as it shows inside a JSON string or a `Debug` string (for the
/// printable characters passwords are made of).
fn escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Every way `password` could show in a program's output: as written (raw,
/// percent-encoded, as a libpq value), each escaped once and twice (a
/// `Debug` string inside a JSON log line), and as lapin prints the bytes
/// of its login frame.
pub fn telltales(password: &str) -> Vec<String> {
    let quoted = libpq_quoted(password);
    let inside_quotes = quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default()
        .to_string();
    let mut forms = Vec::new();
    for written in [
        password.to_string(),
        percent_encoded(password),
        libpq_bare(password),
        inside_quotes,
    ] {
        let once = escaped(&written);
        let twice = escaped(&once);
        forms.extend([written, once, twice]);
    }
    let bytes: Vec<String> = password.bytes().map(|b| b.to_string()).collect();
    forms.push(bytes.join(", "));
    forms.sort();
    forms.dedup();
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_are_as_parsers_and_printers_write_them() {
        assert_eq!(percent_encoded("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(libpq_bare(r"it's a \ x"), r"it\'s\ a\ \\\ x");
        assert_eq!(libpq_quoted(r"it's \"), r"'it\'s \\'");
        let forms = telltales("a\"b");
        for form in ["a\"b", "a\\\"b", "a\\\\\\\"b", "a%22b", "97, 34, 98"] {
            assert!(forms.contains(&form.to_string()), "{form} in {forms:?}");
        }
    }
}
