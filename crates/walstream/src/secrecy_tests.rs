//! No password leaves walstream in a `Display` or `Debug`. Passwords hold
//! any of `,/?#@%:`, spaces, quotes, backslashes, `=` and `&`, and are
//! written in every form an operator may use: a URL with the password
//! percent-encoded or not, in the user info or in the query; keyword/value
//! strings with the password quoted, backslash-escaped or bare, spaces
//! around `=`, the password key repeated; and each of those broken in the
//! ways operators break them (a bad port, an unknown option, a setting
//! without a value, bad percent-encoding, an unclosed IPv6 bracket, an
//! unterminated quote). Neither the parsed settings nor any error of
//! parsing or connecting may show a password, its percent-encoded form, or
//! any run of six letters of it.

use proptest::prelude::*;

use crate::auth::AuthMethod;
use crate::config::ReplicationConfig;
use crate::connect;
use crate::exchange_tests::answers_to;

/// What URLs and keyword strings treat specially, and more.
const SPECIAL: [char; 12] = [',', '/', '?', '#', '@', '%', ':', ' ', '\'', '\\', '=', '&'];

/// Runs of 6 to 10 letters joined by 1 to 3 special characters: a leaked
/// run is found, and a run cannot appear in a message by chance.
fn passwords() -> impl Strategy<Value = String> {
    let run = "[a-zA-Z]{6,10}";
    let glue = proptest::collection::vec(proptest::sample::select(SPECIAL.to_vec()), 1..=3)
        .prop_map(String::from_iter);
    (
        run,
        proptest::collection::vec((glue.clone(), run), 1..=3),
        proptest::option::of(glue),
    )
        .prop_map(|(first, rest, tail)| {
            let mut password = first;
            for (glue, run) in rest {
                password.push_str(&glue);
                password.push_str(&run);
            }
            password.push_str(&tail.unwrap_or_default());
            password
        })
}

fn percent_encoded(password: &str) -> String {
    password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `'...'` with `\` and `'` escaped.
fn quoted(password: &str) -> String {
    format!("'{}'", password.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Bare, with a backslash before each space, quote and backslash.
fn escaped(password: &str) -> String {
    password
        .chars()
        .flat_map(|c| match c {
            ' ' | '\'' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// How the password is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    UrlEncoded,
    UrlRaw,
    QueryEncoded,
    QueryRaw,
    KeywordQuoted,
    KeywordEscaped,
    KeywordRaw,
    /// `password=<decoy> password=<password>`, both quoted.
    KeywordRepeated,
}

impl Form {
    const ALL: [Form; 8] = [
        Form::UrlEncoded,
        Form::UrlRaw,
        Form::QueryEncoded,
        Form::QueryRaw,
        Form::KeywordQuoted,
        Form::KeywordEscaped,
        Form::KeywordRaw,
        Form::KeywordRepeated,
    ];

    /// Whether a libpq parser reads the password back exactly.
    fn well_formed(self) -> bool {
        !matches!(self, Form::UrlRaw | Form::QueryRaw | Form::KeywordRaw)
    }
}

/// What else is wrong with the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breakage {
    Nothing,
    BadPort,
    UnknownOption,
    NoValue,
    BadSslmode,
    BadPercent,
    UnclosedIpv6,
    UnterminatedQuote,
}

impl Breakage {
    const ALL: [Breakage; 8] = [
        Breakage::Nothing,
        Breakage::BadPort,
        Breakage::UnknownOption,
        Breakage::NoValue,
        Breakage::BadSslmode,
        Breakage::BadPercent,
        Breakage::UnclosedIpv6,
        Breakage::UnterminatedQuote,
    ];
}

/// A connection string for `host:port` holding `password` in `form`
/// (`decoy` is the first of two passwords of [`Form::KeywordRepeated`]).
fn write(
    form: Form,
    breakage: Breakage,
    spaced: bool,
    (host, port): (&str, u16),
    password: &str,
    decoy: &str,
) -> String {
    let port = match breakage {
        Breakage::BadPort => "99999".to_string(),
        _ => port.to_string(),
    };
    let host = match breakage {
        Breakage::UnclosedIpv6 => "[::1".to_string(),
        _ => host.to_string(),
    };
    let db = match breakage {
        Breakage::BadPercent => "sh%zzop",
        _ => "shop",
    };
    let tail = match breakage {
        Breakage::UnknownOption => " bogus=1",
        Breakage::NoValue => " sslmode",
        Breakage::BadSslmode => " sslmode=strict",
        Breakage::UnterminatedQuote => " application_name='relay",
        _ => "",
    };
    let query_tail = tail.trim().replace(' ', "&");
    let eq = if spaced { " = " } else { "=" };
    let keywords = |value: String| {
        format!("host={host} port{eq}{port} user=relay password{eq}{value} dbname{eq}{db}{tail}")
    };
    match form {
        Form::UrlEncoded | Form::UrlRaw => {
            let secret = match form {
                Form::UrlEncoded => percent_encoded(password),
                _ => password.to_string(),
            };
            format!("postgres://relay:{secret}@{host}:{port}/{db}?sslmode=prefer&{query_tail}")
        }
        Form::QueryEncoded | Form::QueryRaw => {
            let secret = match form {
                Form::QueryEncoded => percent_encoded(password),
                _ => password.to_string(),
            };
            format!("postgres://relay@{host}:{port}/{db}?password={secret}&{query_tail}")
        }
        Form::KeywordQuoted => keywords(quoted(password)),
        Form::KeywordEscaped => keywords(escaped(password)),
        Form::KeywordRaw => keywords(password.to_string()),
        Form::KeywordRepeated => format!(
            "password{eq}{} {}",
            quoted(decoy),
            keywords(quoted(password))
        ),
    }
}

/// Fails if `shown` holds a password, its percent-encoded form, or a run of
/// six letters of it.
fn assert_hidden(shown: &str, passwords: &[&str]) -> Result<(), TestCaseError> {
    for password in passwords {
        let runs = password
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|run| run.len() >= 6);
        for secret in [password.to_string(), percent_encoded(password)]
            .into_iter()
            .chain(runs.map(str::to_string))
        {
            prop_assert!(
                !shown.contains(&secret),
                "{secret:?} of password {password:?} shows in: {shown}"
            );
        }
    }
    Ok(())
}

fn forms() -> impl Strategy<Value = (Form, Breakage, bool)> {
    (
        proptest::sample::select(Form::ALL.to_vec()),
        proptest::sample::select(Breakage::ALL.to_vec()),
        any::<bool>(),
    )
}

proptest! {
    #[test]
    fn no_form_of_a_password_shows_in_the_settings_or_a_parse_error(
        (form, breakage, spaced) in forms(),
        password in passwords(),
        decoy in passwords(),
    ) {
        let written = write(form, breakage, spaced, ("db.example", 5432), &password, &decoy);
        let secrets = [password.as_str(), decoy.as_str()];
        match ReplicationConfig::parse_with_env(&written, |_| None) {
            Ok(config) => {
                assert_hidden(&format!("{config} {config:?}"), &secrets)?;
                if form.well_formed() && breakage == Breakage::Nothing {
                    let parsed = config.password().map(|p| p.expose().to_string());
                    prop_assert_eq!(parsed.as_deref(), Some(password.as_str()), "{}", written);
                }
            }
            Err(e) => {
                prop_assert!(
                    !(form.well_formed() && breakage == Breakage::Nothing),
                    "a well-formed string was refused: {written}: {e}"
                );
                assert_hidden(&format!("{e} {e:?}"), &secrets)?;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn no_form_of_a_password_shows_in_a_connection_error(
        form in proptest::sample::select(Form::ALL.to_vec()),
        spaced in any::<bool>(),
        password in passwords(),
        decoy in passwords(),
    ) {
        let write_for = |(host, port): (&str, u16)| {
            write(form, Breakage::Nothing, spaced, (host, port), &password, &decoy)
        };
        // Bare passwords may not parse: parse errors are the other test's.
        let parses = ReplicationConfig::parse_with_env(&write_for(("127.0.0.1", 1)), |_| None);
        prop_assume!(parses.is_ok());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut errors = runtime.block_on(async {
            // A server asking for the password in clear text (refused over
            // plain TCP), then one asking for md5 (that refuses the hash).
            let mut errors = Vec::new();
            for method in [AuthMethod::Password, AuthMethod::Md5] {
                let answers = answers_to(method, |addr| write_for(("127.0.0.1", addr.port())));
                errors.extend(answers.await.map(|(e, _)| e));
            }
            // Nobody listening.
            let nobody = ReplicationConfig::parse_with_env(&write_for(("127.0.0.1", closed_port())), |_| None);
            errors.extend(connect::connect(&nobody.unwrap()).await.err());
            errors
        });
        prop_assert_eq!(errors.len(), 5);
        for e in errors.drain(..) {
            assert_hidden(&format!("{e} {e:?}"), &[&password, &decoy])?;
        }
    }
}

/// A port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
