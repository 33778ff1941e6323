//! TLS for both connections, with rustls and ring.
//!
//! It owns: the rustls client configuration for each `sslmode` (the
//! certificate checks of require, verify-ca and verify-full, with the system
//! roots or a given CA file), and the `tls-server-end-point` hash of the
//! server's certificate that SCRAM-SHA-256-PLUS binds to. Both connections
//! negotiate TLS through the same code (`connect::open_link`), so the
//! control connection gets exactly the settings of the replication
//! connection.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{Host, ReplicationConfig, SslMode};
use crate::error::Error;

/// The rustls configuration and server name for one connection target.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// The TLS setup the settings ask for; `None` when TLS is off (disable,
    /// allow, or a Unix socket, where libpq never uses TLS either).
    pub(crate) fn new(config: &ReplicationConfig) -> Result<Option<TlsSetup>, Error> {
        let host = match config.host() {
            Host::Unix(_) => return Ok(None),
            Host::Tcp(h) => h.clone(),
        };
        let (roots, check_name) = match config.sslmode() {
            SslMode::Disable | SslMode::Allow => return Ok(None),
            SslMode::Prefer => (None, false),
            // libpq: with a root certificate given, require checks the chain.
            SslMode::Require => match config.sslrootcert() {
                Some(file) => (Some(load_roots(Some(file))?), false),
                None => (None, false),
            },
            SslMode::VerifyCa => (Some(load_roots(config.sslrootcert())?), false),
            SslMode::VerifyFull => (Some(load_roots(config.sslrootcert())?), true),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PgVerifier {
            roots: roots.map(Arc::new),
            check_name,
            provider: provider.clone(),
        };
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls {
                target: config.target(),
                reason: format!("rustls refused its own defaults: {e}"),
                retryable: false,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // PostgreSQL 17 checks the ALPN name when a client sends one; older
        // servers ignore it.
        tls.alpn_protocols = vec![b"postgresql".to_vec()];
        let server_name = match ServerName::try_from(host.clone()) {
            Ok(name) => name,
            Err(_) if !check_name => ServerName::try_from("localhost")
                .map_err(|e| Error::Config(format!("internal server name: {e}")))?,
            Err(_) => {
                return Err(Error::Config(format!(
                    "host {host:?} is not a valid DNS name or IP address, so sslmode=verify-full \
                     cannot check the server's certificate against it"
                )))
            }
        };
        Ok(Some(TlsSetup {
            config: Arc::new(tls),
            server_name,
        }))
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }

    pub(crate) fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }
}

/// Turns a failed TLS handshake into an error that says what to do.
pub(crate) fn handshake_error(target: String, e: io::Error) -> Error {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => Error::Tls {
            target,
            reason: format!(
                "the server's certificate was refused ({cert:?}); check that sslrootcert is \
                 the CA that signed it and, for sslmode=verify-full, that it names the host \
                 you connect to (or connect by a name it lists)"
            ),
            retryable: false,
        },
        Some(other) => Error::Tls {
            target,
            reason: format!("the TLS handshake failed: {other}"),
            retryable: false,
        },
        None => Error::Tls {
            target,
            reason: format!("the TLS handshake broke: {e}; reconnect"),
            retryable: true,
        },
    }
}

fn load_roots(sslrootcert: Option<&str>) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let default_file = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".postgresql/root.crt"))
        .filter(|p| p.is_file());
    let file = match sslrootcert {
        Some("system") => None,
        Some(path) => Some(std::path::PathBuf::from(path)),
        None => default_file,
    };
    match file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Config(format!(
                        "cannot read the CA certificates in sslrootcert {}: {e}; give a PEM \
                         file holding the CA that signed the server's certificate",
                        path.display()
                    ))
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Config(format!(
                    "sslrootcert {} holds no usable CA certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::Config(
                    "no system root certificates found for verifying the server; install \
                     ca-certificates or set sslrootcert to the CA file"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// Checks the server's certificate as the sslmode asks: not at all
/// (`roots: None`), the chain only (verify-ca), or the chain and the name
/// (verify-full). Handshake signatures are always checked.
#[derive(Debug)]
struct PgVerifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if self.check_name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): the hash of
/// the server's certificate with the hash of its signature algorithm, SHA-256
/// for MD5 and SHA-1. `None` when the algorithm has no such hash (Ed25519,
/// RSA-PSS): PostgreSQL cannot bind those either, so walstream then does
/// not offer channel binding.
pub(crate) fn server_end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    let algorithm = match signature_algorithm_oid(cert_der)? {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1, -SHA256
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04 | 0x05 | 0x0b]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02] => &digest::SHA256,
        // sha384WithRSA, ecdsa-with-SHA384
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => &digest::SHA384,
        // sha512WithRSA, ecdsa-with-SHA512
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The OID (contents bytes) of `Certificate.signatureAlgorithm`.
fn signature_algorithm_oid(cert_der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, certificate, _) = der_element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_tbs_tag, _tbs, rest) = der_element(certificate)?;
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == OID).then_some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_certificate_signature_hash() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point_hash(&p256).unwrap(),
            ring::digest::digest(&ring::digest::SHA256, &p256).as_ref()
        );
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            server_end_point_hash(&p384).unwrap(),
            ring::digest::digest(&ring::digest::SHA384, &p384).as_ref()
        );
        // Ed25519 has no separate hash: PostgreSQL cannot bind it either.
        assert_eq!(server_end_point_hash(&cert(&rcgen::PKCS_ED25519)), None);
    }

    #[test]
    fn garbage_certificates_give_no_hash_and_no_panic() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 1, 2],
        ] {
            assert_eq!(server_end_point_hash(bytes), None);
        }
    }
}
