//! Serving the HTTP API, plain or over TLS, until shutdown.

use super::DRAIN;
use crate::{Error, Result};
use axum::serve::ListenerExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(super) async fn serve_plain(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: &CancellationToken,
) -> Result<()> {
    // Answers are streamed in several writes; without TCP_NODELAY the last one waits for the
    // client's delayed ACK (40 ms per request on a kept-alive connection).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = server => served.map_err(|e| Error::io("the HTTP server failed", e)),
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("requests still running {DRAIN:?} after shutdown began; closing them");
            Ok(())
        }
    }
}

pub(super) async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: axum_server::tls_rustls::RustlsConfig,
    shutdown: &CancellationToken,
) -> Result<()> {
    let listener = listener
        .into_std()
        .map_err(|e| Error::io("the HTTPS listener", e))?;
    let handle = axum_server::Handle::new();
    let stopper = {
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(DRAIN));
        })
    };
    let served = axum_server::from_tcp_rustls(listener, tls)
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .map_err(|e| Error::io("the HTTPS server failed", e));
    stopper.abort();
    served
}

/// The rustls configuration of the HTTP listener (`server`, speaking HTTP/1.1).
pub(super) fn http_tls(server: &rustls::ServerConfig) -> axum_server::tls_rustls::RustlsConfig {
    let mut server = server.clone();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server))
}

/// The node's TLS server configuration from its PEM files, shared by its listeners.
pub(super) fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Config(format!("TLS: cannot read {}: {e}", what.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if chain.is_empty() {
        return Err(bad(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| Error::Config(format!("TLS: the certificate and key do not fit: {e}")))
}
