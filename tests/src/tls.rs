//! [`TlsFront`]: a TLS endpoint in front of the shared RabbitMQ, with a
//! certificate for `localhost` made by the test (its own CA), so that
//! `amqps://` can be tested without touching the broker's configuration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A TLS listener on 127.0.0.1 that forwards each connection, once its
/// handshake succeeds, to the broker on 127.0.0.1:5672. Stops when dropped.
#[derive(Debug)]
pub struct TlsFront {
    /// Its port.
    pub port: u16,
    /// Handshakes that succeeded.
    pub handshakes: Arc<AtomicUsize>,
    /// The certificate to trust (PEM): it signs itself.
    pub ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Starts it on the current runtime.
    pub async fn start() -> TlsFront {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("a TLS server configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the TLS front");
        let port = listener.local_addr().expect("its address").port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(crate::amqp::amqp_addr()).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        TlsFront {
            port,
            handshakes,
            ca_pem: certified.cert.pem(),
            task,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
