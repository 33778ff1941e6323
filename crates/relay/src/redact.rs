//! Redaction of the strings that carry passwords: PostgreSQL connection
//! strings (libpq's URL and keyword/value forms) and lists of RabbitMQ
//! URLs. Every password becomes `***`; the rest (hosts, ports, users,
//! databases, options) stays as written, so that `config` output, check
//! lines and errors still say which server is meant.
//!
//! Pure functions over text that never fail. A malformed string gets the
//! widest reading: when it is unclear whether some text belongs to a
//! password, it is hidden. This module also owns the rule that splits
//! RELAY_AMQP_URL into URLs ([`split_amqp_urls`]), so that what is
//! connected to and what is redacted agree on where each URL ends.

use std::ops::Range;

/// What replaces a secret.
pub const MASK: &str = "***";

/// `text`, a libpq connection string, with every password replaced by
/// `***`.
///
/// URL form (`postgres://` or `postgresql://`): the password of the
/// userinfo, from its first `:` to the LAST `@` (a password may hold `@`,
/// `/`, `?`, `#` or `:` unencoded), and the value of every query parameter
/// named `password` (or `sslpassword`). Keyword/value form: the value of
/// every `password` (or `sslpassword`) key, quoted or not, wherever it
/// repeats; words without `=` that follow a password (an unquoted password
/// with spaces) go with it; a `dbname` holding a connection string of its
/// own is redacted in turn.
pub fn pg_conninfo(text: &str) -> String {
    if starts_with_scheme(text, &["postgres://", "postgresql://"]) {
        url(text)
    } else {
        keywords(text)
    }
}

/// `text`, one or several `amqp://` or `amqps://` URLs separated by commas
/// (see [`split_amqp_urls`]), with the password of each replaced by `***`
/// as in [`pg_conninfo`]'s URL form. Separators and spacing are kept.
pub fn amqp_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for end in amqp_list_commas(text).chain([text.len()]) {
        out.push_str(&url(text.get(start..end).unwrap_or_default()));
        if end < text.len() {
            out.push(',');
        }
        start = end + 1;
    }
    out
}

/// The URLs of an RELAY_AMQP_URL value, trimmed, empty ones left out.
///
/// Passwords may contain commas, so the list is split only at a comma
/// followed (after optional whitespace) by `amqp://` or `amqps://` (in any
/// case): `amqp://u:a,b@h1, amqps://u:c@h2` is two URLs.
pub fn split_amqp_urls(text: &str) -> Vec<&str> {
    let mut urls = Vec::new();
    let mut start = 0;
    for end in amqp_list_commas(text).chain([text.len()]) {
        let piece = text.get(start..end).unwrap_or_default().trim();
        if !piece.is_empty() {
            urls.push(piece);
        }
        start = end + 1;
    }
    urls
}

/// Whether `text` starts (after whitespace) with `amqp://` or `amqps://`, in
/// any case: a broker URL or a list of them rather than a PostgreSQL
/// connection string.
pub fn is_amqp_url(text: &str) -> bool {
    starts_with_scheme(text, &["amqp://", "amqps://"])
}

fn starts_with_scheme(text: &str, schemes: &[&str]) -> bool {
    let text = text.trim_start();
    schemes.iter().any(|scheme| {
        text.get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    })
}

/// The byte positions of the commas that separate the URLs of a list.
fn amqp_list_commas(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.match_indices(',')
        .map(|(i, _)| i)
        .filter(move |i| is_amqp_url(text.get(i + 1..).unwrap_or_default()))
}

/// A URL (`scheme://user:password@host...`, or the same without a scheme)
/// with the userinfo's password and any password query parameter masked.
fn url(text: &str) -> String {
    let mut secrets = Vec::new();
    let authority = text.find("://").map_or(0, |i| i + 3);
    let rest = text.get(authority..).unwrap_or_default();
    // The last '@' ends the userinfo: an '@' in the password is then
    // hidden with it, and an '@' further on (in a query value) hides more
    // than needed, never less.
    match rest.rfind('@') {
        Some(at) => {
            if let Some(colon) = rest.get(..at).and_then(|u| u.find(':')) {
                secrets.push(authority + colon + 1..authority + at);
            }
        }
        // No '@': a port that is not a number may be a password (a URL
        // without its host, or cut short at a comma): hidden to the end.
        None => {
            if let Some(colon) = odd_port(rest) {
                secrets.push(authority + colon + 1..text.len());
            }
        }
    }
    secrets.extend(query_passwords(text, authority));
    splice(
        text,
        merge(secrets)
            .into_iter()
            .map(|r| (r, MASK.to_string()))
            .collect(),
    )
}

/// In an authority without userinfo (`host:port,host:port/...`), the
/// position of the first `:` whose port is not digits.
fn odd_port(rest: &str) -> Option<usize> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut start = 0;
    for host in rest.get(..end)?.split(',') {
        // An IPv6 address holds colons of its own: only `]:port` counts.
        let colon = match host.strip_prefix('[') {
            Some(v6) => v6.find("]:").map(|i| i + 2),
            None => host.find(':'),
        };
        if let Some(colon) = colon {
            let port = host.get(colon + 1..).unwrap_or_default();
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Some(start + colon);
            }
        }
        start += host.len() + 1;
    }
    None
}

/// The value ranges of the secret query parameters (`?password=` or
/// `&password=`) after byte `from`. The query's start cannot be told from a
/// `?` in a password, so every `?` and `&` is a candidate. A value runs to
/// the next `&key=` (a raw `&` in a password is cut there, as parsers cut
/// it) or to the end of the text, fragment included.
fn query_passwords(text: &str, from: usize) -> Vec<Range<usize>> {
    let rest = text.get(from..).unwrap_or_default();
    rest.match_indices(['?', '&'])
        .filter_map(|(i, _)| {
            let key_start = from + i + 1;
            let eq = param_key_end(text, key_start)?;
            is_secret_key(&percent_decoded(text.get(key_start..eq)?)).then(|| {
                let value_start = eq + 1;
                let value_end = text
                    .get(value_start..)
                    .unwrap_or_default()
                    .match_indices('&')
                    .map(|(j, _)| value_start + j)
                    .find(|amp| param_key_end(text, amp + 1).is_some())
                    .unwrap_or(text.len());
                value_start..value_end
            })
        })
        .collect()
}

/// If a query parameter's `key=` starts at `start`, the position of its `=`.
fn param_key_end(text: &str, start: usize) -> Option<usize> {
    let rest = text.get(start..)?;
    let len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%'))
        .count();
    (len > 0 && rest.as_bytes().get(len) == Some(&b'=')).then_some(start + len)
}

/// Whether a connection parameter carries a password (`password`,
/// `sslpassword`, in any case: a misspelt key is hidden all the same).
fn is_secret_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

/// `%XX` sequences decoded; anything else (invalid sequences, invalid
/// UTF-8) kept or replaced, never an error.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's keyword/value form: `key = value` pairs separated by whitespace,
/// a value single-quoted (with `\'` and `\\`) or bare (with `\` escaping
/// the next character).
fn keywords(text: &str) -> String {
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    // Whether the last edit is a mask that stray words extend.
    let mut masking = false;
    let mut s = Scanner { text, pos: 0 };
    loop {
        s.skip_whitespace();
        if s.at_end() {
            break;
        }
        let key_start = s.pos;
        s.skip_while(|c| c != '=' && !is_space(c));
        let key_end = s.pos;
        s.skip_whitespace();
        if !s.eat('=') {
            // A word without '=' is no setting (libpq refuses the string):
            // a URL keeps all but its password; anything else may be a
            // piece of one (the rest of an unquoted password with spaces, a
            // URL cut at a comma) and is hidden.
            s.pos = key_end;
            let word = key_start..key_end;
            let shown = text.get(word.clone()).unwrap_or_default();
            match edits.last_mut() {
                Some((masked, _)) if masking => masked.end = key_end,
                _ if shown.contains("://") => {
                    let redacted = url(shown);
                    if redacted != shown {
                        edits.push((word, redacted));
                    }
                }
                _ => {
                    edits.push((word, MASK.to_string()));
                    masking = true;
                }
            }
            continue;
        }
        let key = text.get(key_start..key_end).unwrap_or_default();
        s.skip_whitespace();
        let (range, value) = s.value();
        masking = false;
        if is_secret_key(key) {
            if !range.is_empty() {
                edits.push((range, MASK.to_string()));
                masking = true;
            }
        } else if key.eq_ignore_ascii_case("dbname")
            && (value.contains('=') || value.contains("://"))
        {
            // libpq expands a dbname that is itself a connection string.
            let redacted = pg_conninfo(&value);
            if redacted != value {
                edits.push((range, quoted(&redacted)));
            }
        }
    }
    splice(text, edits)
}

/// libpq's separator between pairs (C's isspace, ASCII only: a value runs
/// on through other spaces).
fn is_space(c: char) -> bool {
    c.is_ascii_whitespace() || c == '\x0b'
}

/// A value as libpq would read it back.
fn quoted(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| is_space(c) || c == '\'' || c == '\\') {
        return value.to_string();
    }
    let mut out = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A cursor over a keyword/value string.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..)?.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn at_end(&self) -> bool {
        self.peek().is_none()
    }

    fn eat(&mut self, want: char) -> bool {
        let found = self.peek() == Some(want);
        if found {
            self.bump();
        }
        found
    }

    fn skip_while(&mut self, keep: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.bump();
        }
    }

    fn skip_whitespace(&mut self) {
        self.skip_while(is_space);
    }

    /// A value at the cursor: its range as written (quotes included) and
    /// its text unescaped. An unterminated quote runs to the end.
    fn value(&mut self) -> (Range<usize>, String) {
        let start = self.pos;
        let mut value = String::new();
        if self.eat('\'') {
            while let Some(c) = self.bump() {
                match c {
                    '\'' => break,
                    '\\' => value.extend(self.bump()),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = self.peek().filter(|c| !is_space(*c)) {
                self.bump();
                if c == '\\' {
                    value.extend(self.bump());
                } else {
                    value.push(c);
                }
            }
        }
        (start..self.pos, value)
    }
}

/// Overlapping or touching ranges joined, in order.
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// `text` with each range (in order, disjoint) replaced.
fn splice(text: &str, edits: Vec<(Range<usize>, String)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (range, replacement) in edits {
        out.push_str(text.get(pos..range.start).unwrap_or_default());
        out.push_str(&replacement);
        pos = range.end;
    }
    out.push_str(text.get(pos..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use e2e::secrets::{libpq_bare, libpq_quoted, percent_encoded, telltales};
    use proptest::prelude::*;

    use super::*;

    /// Each text redacted by [`pg_conninfo`] reads as shown.
    fn assert_shown(cases: &[(&str, &str)]) {
        for (text, shown) in cases {
            assert_eq!(pg_conninfo(text), *shown, "{text}");
        }
    }

    #[test]
    fn url_passwords_run_to_the_last_at_sign() {
        assert_shown(&[
            (
                "postgres://relay:s3cret@db:5432/app",
                "postgres://relay:***@db:5432/app",
            ),
            (
                "postgresql://relay:a/b?c#d@e:f@db/app?sslmode=require",
                "postgresql://relay:***@db/app?sslmode=require",
            ),
            (
                "postgres://relay:p%40ss@db/app",
                "postgres://relay:***@db/app",
            ),
            ("POSTGRES://relay:pw@db", "POSTGRES://relay:***@db"),
            (
                "postgres://relay:pw@h1:5432,h2:5433/app",
                "postgres://relay:***@h1:5432,h2:5433/app",
            ),
            ("postgres://relay@db/app", "postgres://relay@db/app"),
            ("postgres://db:5432/app", "postgres://db:5432/app"),
            ("postgres://relay:@db/app", "postgres://relay:@db/app"),
            ("postgres://[::1]:5432/app", "postgres://[::1]:5432/app"),
            (
                "postgres://db/app?application_name=a:b",
                "postgres://db/app?application_name=a:b",
            ),
            // No '@' and a port that is not a number: a password without its
            // host, or a URL cut short.
            ("amqp://guest:guest", "amqp://guest:***"),
            ("postgres://u:ab/cd?e", "postgres://u:***"),
            ("postgres://u:/abc", "postgres://u:***"),
            ("postgres://h1:5432,u:secret", "postgres://h1:5432,u:***"),
            ("postgres://[::1]:x/app", "postgres://[::1]:***"),
            // An '@' in a query value: more is hidden than needed.
            (
                "postgres://db:5432/app?application_name=a@b",
                "postgres://db:***@b",
            ),
            (
                "postgres://db/app?application_name=a@b",
                "postgres://db/app?application_name=a@b",
            ),
        ]);
    }

    #[test]
    fn password_query_parameters_are_masked_in_urls() {
        assert_shown(&[
            (
                "postgres://relay@db/app?password=s3cret&sslmode=require",
                "postgres://relay@db/app?password=***&sslmode=require",
            ),
            (
                "postgres://db/app?sslmode=require&password=a?b#c",
                "postgres://db/app?sslmode=require&password=***",
            ),
            (
                "postgres://db/app?sslpassword=k&pass%77ord=p",
                "postgres://db/app?sslpassword=***&pass%77ord=***",
            ),
            (
                "postgres://relay:x@db/app?password=y",
                "postgres://relay:***@db/app?password=***",
            ),
            // An '@' in the query's password: the userinfo rule reaches
            // into the query and the two masks join.
            (
                "postgres://relay@db/app?password=a:b@c",
                "postgres://relay@db/app?password=***",
            ),
        ]);
    }

    #[test]
    fn keyword_passwords_are_masked_in_every_libpq_form() {
        assert_shown(&[
            (
                "host=db user=relay password=s3cret dbname=app",
                "host=db user=relay password=*** dbname=app",
            ),
            (
                "host=db password = 'it\\'s a \\\\ secret' dbname=app",
                "host=db password = *** dbname=app",
            ),
            (
                "password=first host=db password='second one' password=third\\ x",
                "password=*** host=db password=*** password=***",
            ),
            ("host=db PASSWORD=x", "host=db PASSWORD=***"),
            ("host=db sslpassword=k", "host=db sslpassword=***"),
            ("host=db password=", "host=db password="),
            // Unterminated quote: the rest of the string.
            ("host=db password='abc def dbname=x", "host=db password=***"),
            // An unquoted password with spaces (libpq refuses it): the
            // stray words go with it.
            (
                "host=db password=my secret pw dbname=app",
                "host=db password=*** dbname=app",
            ),
            // A dbname holding a connection string of its own.
            (
                "dbname='host=h password=x' user=u",
                "dbname='host=h password=***' user=u",
            ),
            (
                "dbname=postgres://u:pw@h/db user=u",
                "dbname=postgres://u:***@h/db user=u",
            ),
            // A mistyped scheme is still a URL with a password.
            ("postgress://u:pw@h/db", "postgress://u:***@h/db"),
            // Other words without '=' may be pieces of a password.
            ("host=db stray words port=1", "host=db *** port=1"),
            ("W@127.0.0.1:5672/%2f", "***"),
            ("host=db port=5432", "host=db port=5432"),
            ("", ""),
        ]);
    }

    #[test]
    fn amqp_lists_split_only_before_a_scheme() {
        assert_eq!(
            split_amqp_urls("amqp://a:p,w@b1, amqps://c@b2 ,AMQP://d@b3"),
            ["amqp://a:p,w@b1", "amqps://c@b2", "AMQP://d@b3"]
        );
        assert_eq!(split_amqp_urls("amqp://b1/%2f"), ["amqp://b1/%2f"]);
        assert_eq!(split_amqp_urls("  "), Vec::<&str>::new());
        assert_eq!(split_amqp_urls(",amqp://b1"), ["amqp://b1"]);
        assert_eq!(split_amqp_urls("amqp://b1,"), ["amqp://b1,"]);
        assert!(is_amqp_url(" AMQPS://h") && !is_amqp_url("postgres://h"));
    }

    #[test]
    fn every_url_of_an_amqp_list_is_masked() {
        assert_eq!(
            amqp_urls("amqp://u:p1@b1/%2f,amqp://u:p,2@b2/%2f, amqps://u:p@3@b3"),
            "amqp://u:***@b1/%2f,amqp://u:***@b2/%2f, amqps://u:***@b3"
        );
        assert_eq!(amqp_urls("amqp://b1/%2f"), "amqp://b1/%2f");
        assert_eq!(amqp_urls("amqp://u:Amq/pSecret@h"), "amqp://u:***@h");
    }

    #[test]
    fn pieces_of_a_url_cut_at_its_password_commas_are_hidden() {
        // amqp://relay:l,i/':"BI:"jiA%c%,W@127.0.0.1:5672/%2f split at every
        // comma, as the first reader of RELAY_AMQP_URL did.
        assert_eq!(amqp_urls("amqp://relay:l"), "amqp://relay:***");
        assert_eq!(pg_conninfo("i/':\"BI:\"jiA%c%"), "***");
        assert_eq!(pg_conninfo("W@127.0.0.1:5672/%2f"), "***");
        // Ambiguous: a head of digits reads as a port, a head starting with
        // '@' as an empty password.
        assert_eq!(amqp_urls("amqp://relay:0?x"), "amqp://relay:0?x");
        assert_eq!(amqp_urls("amqp://relay:@x"), "amqp://relay:@x");
    }

    /// Passwords worth hiding: the characters that break naive parsers,
    /// long enough to be told apart from the rest of the output.
    fn password() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 '\"\\\\,/?#@%:é日🦀]{8,20}".prop_filter("recognisable", |p| {
            p.chars().filter(|c| c.is_alphanumeric()).count() >= 3
        })
    }

    fn assert_hidden(shown: &str, passwords: &[&str]) {
        for p in passwords {
            for telltale in telltales(p) {
                assert!(!shown.contains(&telltale), "{telltale:?} in {shown:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn pg_url_passwords_never_show(p in password(), q in password()) {
            let raw = format!("postgres://relay:{p}@db.example.com:5432/shop?sslmode=require");
            let shown = pg_conninfo(&raw);
            assert_hidden(&shown, &[&p]);
            prop_assert_eq!(shown, "postgres://relay:***@db.example.com:5432/shop?sslmode=require");

            let encoded = format!("postgresql://relay:{}@db.example.com/shop", percent_encoded(&p));
            let shown = pg_conninfo(&encoded);
            assert_hidden(&shown, &[&p]);
            prop_assert_eq!(shown, "postgresql://relay:***@db.example.com/shop");

            let query = format!(
                "postgres://relay@db.example.com:5432/shop?sslmode=require&password={}&application_name=x",
                percent_encoded(&q)
            );
            let shown = pg_conninfo(&query);
            assert_hidden(&shown, &[&q]);
            prop_assert_eq!(
                shown,
                "postgres://relay@db.example.com:5432/shop?sslmode=require&password=***&application_name=x"
            );

            // Raw in the query: hidden, whatever else goes with it.
            let both = format!("postgres://relay:{p}@db.example.com/shop?password={q}");
            assert_hidden(&pg_conninfo(&both), &[&p, &q]);
        }

        #[test]
        fn keyword_passwords_never_show(p in password(), q in password()) {
            let quoted = libpq_quoted(&p);
            let text = format!("host=db.example.com port = 5432 user=relay password = {quoted} dbname=shop");
            let shown = pg_conninfo(&text);
            assert_hidden(&shown, &[&p]);
            prop_assert_eq!(shown, "host=db.example.com port = 5432 user=relay password = *** dbname=shop");

            let escaped = libpq_bare(&p);
            let text = format!("host=db.example.com user=relay password={escaped} dbname=shop");
            let shown = pg_conninfo(&text);
            assert_hidden(&shown, &[&p]);
            prop_assert_eq!(shown, "host=db.example.com user=relay password=*** dbname=shop");

            let (pe, qq) = (libpq_bare(&p), libpq_quoted(&q));
            let text = format!("password={pe} host=db.example.com password={qq} user=relay dbname=shop");
            let shown = pg_conninfo(&text);
            assert_hidden(&shown, &[&p, &q]);
            prop_assert_eq!(shown, "password=*** host=db.example.com password=*** user=relay dbname=shop");

            // Written raw (libpq would refuse most of these): still hidden.
            let raw = format!("host=db.example.com password={p}");
            assert_hidden(&pg_conninfo(&raw), &[&p]);
        }

        #[test]
        fn amqp_list_passwords_never_show(p in password(), q in password(), r in password()) {
            let encoded = percent_encoded(&q);
            let text = format!(
                "amqp://relay:{p}@b1.example.com:5672/%2f, amqps://relay:{encoded}@b2.example.com/vh,amqp://relay:{r}@b3.example.com"
            );
            prop_assert_eq!(split_amqp_urls(&text).len(), 3);
            let shown = amqp_urls(&text);
            assert_hidden(&shown, &[&p, &q, &r]);
            prop_assert_eq!(
                shown,
                "amqp://relay:***@b1.example.com:5672/%2f, amqps://relay:***@b2.example.com/vh,amqp://relay:***@b3.example.com"
            );
        }
    }
}
