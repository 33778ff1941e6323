//! Which authentication walstream agrees to: the methods a server may ask
//! for ([`AuthMethod`]), the operator's list of acceptable ones
//! ([`RequireAuth`], libpq's `require_auth`), and the decision, for one
//! request on one link, whether walstream answers it ([`AuthPolicy`]).
//!
//! Two rules, checked when the server asks and before anything is sent in
//! answer:
//! - the method must be one `require_auth` allows (by default, all);
//! - a cleartext password (pg_hba.conf method `password`) goes over plain
//!   TCP only when `require_auth` lists `password` explicitly. TLS and Unix
//!   sockets (which never leave the machine) carry it without asking.
//!
//! Both connections apply them: the replication connection in its
//! authentication exchange (`connect`), the control connection through
//! the guard that sits under tokio-postgres (`guard`).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// How the server authenticated a connection (or asks to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked (trust, peer).
    Trust,
    /// A cleartext password.
    Password,
    /// MD5.
    Md5,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS: bound to the TLS channel (tls-server-end-point).
    ScramSha256Plus,
}

impl AuthMethod {
    /// The method's name in `require_auth`.
    fn require_auth_name(self) -> &'static str {
        match self {
            AuthMethod::Trust => "none",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 | AuthMethod::ScramSha256Plus => "scram-sha-256",
        }
    }

    /// What the server asks for, in words.
    fn describe(self) -> &'static str {
        match self {
            AuthMethod::Trust => "no authentication at all (trust)",
            AuthMethod::Password => "cleartext password authentication",
            AuthMethod::Md5 => "md5 password authentication",
            AuthMethod::ScramSha256 | AuthMethod::ScramSha256Plus => "SCRAM-SHA-256 authentication",
        }
    }

    /// The method's bit in a [`RequireAuth`] set.
    fn bit(self) -> u8 {
        name_bit(self.require_auth_name()).unwrap_or(0)
    }
}

/// The names `require_auth` knows, as libpq 18 does. walstream speaks only
/// password, md5, scram-sha-256 and none; the others are accepted so that a
/// libpq connection string parses, and a server asking for them is refused
/// as a method walstream does not speak. A name's bit is its index.
const NAMES: [&str; 7] = [
    "password",
    "md5",
    "gss",
    "sspi",
    "scram-sha-256",
    "oauth",
    "none",
];

fn name_bit(name: &str) -> Option<u8> {
    let index = NAMES.iter().position(|n| *n == name)?;
    u32::try_from(index).ok().map(|i| 1 << i)
}

/// The authentication methods the operator accepts, as libpq's
/// `require_auth`: a comma-separated list of methods to allow
/// (`scram-sha-256`, `password,md5`), or of methods to refuse
/// (`!md5,!password`), never both. Names: `password` (cleartext), `md5`,
/// `scram-sha-256`, `none` (the server asks for nothing: trust), and
/// `gss`, `sspi`, `oauth` (which walstream does not speak).
///
/// The default (an empty `require_auth`) allows every method, except that
/// a cleartext password is never sent over plain TCP unless `password` is
/// listed explicitly (see [`allows_cleartext_over_plain_tcp`](Self::allows_cleartext_over_plain_tcp)).
///
/// `Display` writes the setting back in libpq's syntax (empty for the
/// default), methods in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequireAuth {
    /// Whether `listed` are the refused methods (else the allowed ones).
    negated: bool,
    /// A bit per name of [`NAMES`].
    listed: u8,
}

impl Default for RequireAuth {
    /// Every method allowed: nothing refused.
    fn default() -> RequireAuth {
        RequireAuth {
            negated: true,
            listed: 0,
        }
    }
}

impl RequireAuth {
    /// Whether a server may authenticate the connection with `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        (self.listed & method.bit() != 0) != self.negated
    }

    /// Whether `password` is listed among the allowed methods: only then
    /// does walstream send a cleartext password over a TCP connection
    /// without TLS.
    pub fn allows_cleartext_over_plain_tcp(&self) -> bool {
        !self.negated && self.listed & AuthMethod::Password.bit() != 0
    }

    /// Whether this is the default (no method refused).
    pub fn is_default(&self) -> bool {
        *self == RequireAuth::default()
    }
}

impl FromStr for RequireAuth {
    type Err = Error;

    fn from_str(s: &str) -> Result<RequireAuth, Error> {
        let mut parsed = RequireAuth::default();
        if s.trim().is_empty() {
            return Ok(parsed);
        }
        for (i, item) in s.split(',').map(str::trim).enumerate() {
            let (negated, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            if i == 0 {
                parsed.negated = negated;
            } else if negated != parsed.negated {
                return Err(Error::Config(format!(
                    "require_auth {s:?} mixes methods to allow with methods to refuse (!method); \
                     list either the methods to allow or the ones to refuse, as libpq requires"
                )));
            }
            let bit = name_bit(name).ok_or_else(|| {
                Error::Config(format!(
                    "require_auth {s:?} names {name:?}, which is not an authentication method; \
                     give a comma-separated list of {} (or of their negations, e.g. \
                     !md5,!password)",
                    NAMES.join(", ")
                ))
            })?;
            if parsed.listed & bit != 0 {
                return Err(Error::Config(format!(
                    "require_auth {s:?} names {name:?} twice; name each method once"
                )));
            }
            parsed.listed |= bit;
        }
        Ok(parsed)
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.negated { "!" } else { "" };
        let listed = NAMES
            .iter()
            .filter(|name| name_bit(name).is_some_and(|bit| self.listed & bit != 0));
        for (i, name) in listed.enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{prefix}{name}")?;
        }
        Ok(())
    }
}

/// Whether walstream answers an authentication request on one link: the
/// operator's `require_auth`, and whether the link is plain TCP.
#[derive(Debug, Clone)]
pub(crate) struct AuthPolicy {
    require: RequireAuth,
    plain_tcp: bool,
    user: String,
}

impl AuthPolicy {
    /// The policy for role `user` on a link that is plain TCP or not (TLS,
    /// Unix socket).
    pub(crate) fn new(require: RequireAuth, plain_tcp: bool, user: &str) -> AuthPolicy {
        AuthPolicy {
            require,
            plain_tcp,
            user: user.to_string(),
        }
    }

    /// `Ok` if walstream may answer the server's request for `method`;
    /// else the non-retryable error that says which setting to change.
    pub(crate) fn permit(&self, method: AuthMethod) -> Result<(), Error> {
        let refuse = |reason: String| {
            Err(Error::Auth {
                user: self.user.clone(),
                reason,
            })
        };
        if !self.require.allows(method) {
            let name = method.require_auth_name();
            let fix = if self.require.negated {
                format!(
                    "have pg_hba.conf give this role another method (then reload PostgreSQL), \
                     or remove !{name} from require_auth"
                )
            } else {
                format!(
                    "have pg_hba.conf give this role a method that require_auth lists (then \
                     reload PostgreSQL), or add {name} to require_auth"
                )
            };
            let warning = if method == AuthMethod::Trust {
                " (a server that asks for nothing may not be the server you meant to reach)"
            } else {
                ""
            };
            return refuse(format!(
                "the server asked for {}{warning}, which require_auth={} does not allow; {fix}",
                method.describe(),
                self.require
            ));
        }
        if method == AuthMethod::Password
            && self.plain_tcp
            && !self.require.allows_cleartext_over_plain_tcp()
        {
            return refuse(
                "the server asked for the password in clear text (pg_hba.conf method \
                 `password`) over a connection without TLS, and walstream does not send a \
                 password unencrypted unless told to; use TLS (sslmode=require or stricter, with \
                 ssl = on in postgresql.conf), switch the role to scram-sha-256 in pg_hba.conf \
                 (then reload PostgreSQL), or allow it explicitly with require_auth=password"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn require(s: &str) -> RequireAuth {
        s.parse().unwrap()
    }

    const ALL: [AuthMethod; 5] = [
        AuthMethod::Trust,
        AuthMethod::Password,
        AuthMethod::Md5,
        AuthMethod::ScramSha256,
        AuthMethod::ScramSha256Plus,
    ];

    #[test]
    fn require_auth_lists_allow_exactly_the_methods_they_name() {
        let scram = require("scram-sha-256");
        assert!(scram.allows(AuthMethod::ScramSha256));
        assert!(scram.allows(AuthMethod::ScramSha256Plus));
        for refused in [AuthMethod::Trust, AuthMethod::Password, AuthMethod::Md5] {
            assert!(!scram.allows(refused), "{refused:?}");
        }
        let some = require(" md5 , password,none");
        assert!(some.allows(AuthMethod::Md5) && some.allows(AuthMethod::Password));
        assert!(some.allows(AuthMethod::Trust));
        assert!(!some.allows(AuthMethod::ScramSha256));
        assert_eq!(some.to_string(), "password,md5,none");
    }

    #[test]
    fn negation_lists_allow_everything_but_the_methods_they_name() {
        let no_weak = require("!md5,!password");
        assert!(!no_weak.allows(AuthMethod::Md5));
        assert!(!no_weak.allows(AuthMethod::Password));
        assert!(no_weak.allows(AuthMethod::ScramSha256));
        assert!(no_weak.allows(AuthMethod::Trust));
        assert_eq!(no_weak.to_string(), "!password,!md5");
        let must_authenticate = require("!none");
        assert!(!must_authenticate.allows(AuthMethod::Trust));
        assert!(must_authenticate.allows(AuthMethod::Md5));
        // Refusing password does not make it explicit, nor allowing it by
        // default.
        assert!(!require("!md5").allows_cleartext_over_plain_tcp());
        assert!(!RequireAuth::default().allows_cleartext_over_plain_tcp());
        assert!(require("scram-sha-256,password").allows_cleartext_over_plain_tcp());
    }

    #[test]
    fn the_default_and_an_empty_setting_allow_every_method() {
        for setting in [RequireAuth::default(), require(""), require("  ")] {
            assert!(setting.is_default());
            assert!(ALL.iter().all(|m| setting.allows(*m)));
            assert_eq!(setting.to_string(), "");
        }
    }

    #[test]
    fn unknown_mixed_duplicate_and_empty_names_are_refused_like_libpq() {
        let err = |s: &str| s.parse::<RequireAuth>().unwrap_err().to_string();
        assert!(
            err("scram").contains("\"scram\", which is not"),
            "{}",
            err("scram")
        );
        assert!(err("md5,!password").contains("mixes methods"));
        assert!(err("!md5,password").contains("mixes methods"));
        assert!(err("md5,md5").contains("twice"));
        assert!(err("!none,!none").contains("twice"));
        assert!(err("md5,,password").contains("\"\", which is not"));
        assert!(err("!").contains("\"\", which is not"));
        // libpq's other names parse, although walstream does not speak them.
        for name in ["gss", "sspi", "oauth", "!gss,!sspi"] {
            assert_eq!(require(name).to_string(), name);
        }
    }

    #[test]
    fn settings_print_back_as_they_parse() {
        for s in [
            "scram-sha-256",
            "password,scram-sha-256",
            "!md5",
            "!password,!none",
        ] {
            assert_eq!(require(s), require(&require(s).to_string()), "{s}");
        }
    }

    #[test]
    fn a_refused_method_names_the_request_the_setting_and_the_fix() {
        let policy = AuthPolicy::new(require("scram-sha-256"), false, "relay");
        let err = policy.permit(AuthMethod::Password).unwrap_err();
        assert!(matches!(err, Error::Auth { .. }));
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains(
                "the server asked for cleartext password authentication, which \
                 require_auth=scram-sha-256 does not allow"
            ),
            "{text}"
        );
        assert!(text.contains("add password to require_auth"), "{text}");
        let err = policy.permit(AuthMethod::Trust).unwrap_err().to_string();
        assert!(err.contains("may not be the server you meant"), "{err}");
        let negated = AuthPolicy::new(require("!md5"), false, "relay");
        let err = negated.permit(AuthMethod::Md5).unwrap_err().to_string();
        assert!(err.contains("require_auth=!md5 does not allow"), "{err}");
        assert!(err.contains("remove !md5 from require_auth"), "{err}");
        assert!(policy.permit(AuthMethod::ScramSha256Plus).is_ok());
    }

    #[test]
    fn a_cleartext_password_crosses_plain_tcp_only_when_listed() {
        let plain_tcp = |s: &str| AuthPolicy::new(require(s), true, "relay");
        let err = plain_tcp("").permit(AuthMethod::Password).unwrap_err();
        assert!(!err.is_retryable());
        let text = err.to_string();
        for fix in [
            "sslmode=require",
            "scram-sha-256 in pg_hba.conf",
            "require_auth=password",
        ] {
            assert!(text.contains(fix), "{text}");
        }
        assert!(plain_tcp("!md5").permit(AuthMethod::Password).is_err());
        assert!(plain_tcp("password").permit(AuthMethod::Password).is_ok());
        assert!(plain_tcp("").permit(AuthMethod::Md5).is_ok());
        // TLS or a Unix socket carries it by default.
        let private_link = AuthPolicy::new(RequireAuth::default(), false, "relay");
        assert!(private_link.permit(AuthMethod::Password).is_ok());
    }
}
