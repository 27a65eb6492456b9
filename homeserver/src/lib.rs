//! Bellwire, a Matrix homeserver: library of the `bellwire` binary (config, storage, services, HTTP API).

pub mod account_data;
pub mod accounts;
pub mod api;
pub mod cache;
pub mod config;
pub mod directory;
pub mod e2ee;
pub mod ephemeral;
pub mod error;
pub mod federation;
pub mod media;
pub mod outbox;
pub mod profiles;
pub mod push;
pub mod ratelimit;
pub mod reports;
pub mod rooms;
pub mod services;
pub mod signing_key;
pub mod storage;
pub mod stream;
pub mod sync;
#[cfg(test)]
mod test_support;
pub mod tls;

use std::sync::Arc;

use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database at {path}: {source}")]
    Database {
        path: String,
        source: storage::StorageError,
    },
    #[error("cannot start services: {0}")]
    Services(#[from] error::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("federation TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Replaces the signing key in the configured database (server stopped).
pub fn rotate_signing_key(config: &Config) -> Result<String, StartError> {
    let store = storage::Store::open(&config.database_path, true).map_err(|source| {
        StartError::Database {
            path: config.database_path.display().to_string(),
            source,
        }
    })?;
    Ok(signing_key::rotate(&store)?)
}

/// Opens the store, builds the services and serves until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), StartError> {
    if let Some(parent) = config.database_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let store =
        storage::Store::open(&config.database_path, config.sync_writes).map_err(|source| {
            StartError::Database {
                path: config.database_path.display().to_string(),
                source,
            }
        })?;
    let addr = config.listen;
    let services = Arc::new(services::Services::build(config, store)?);
    let federation = services.config.federation.clone();
    let app = api::router(services);
    if let Some(f) = federation {
        let tls = tls::server_config(&f.tls_certificate, &f.tls_private_key)?;
        let tcp = tokio::net::TcpListener::bind(f.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: f.listen,
                source,
            })?;
        let bound = tcp.local_addr().map_err(StartError::Serve)?;
        let listener = tls::TlsListener::new(tcp, tls).map_err(StartError::Serve)?;
        println!("bellwire: federation listening on {bound}");
        let app = app.clone();
        tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // tap_io only to get axum's ConnectInfo<SocketAddr> for a custom listener.
            let listener = listener.tap_io(|_| {});
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await;
            if let Err(e) = served {
                tracing::error!("federation listener stopped: {e}");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let bound = listener.local_addr().map_err(StartError::Serve)?;
    // Tests and scripts read this exact line to learn the port.
    println!("bellwire: listening on {bound}");
    use axum::serve::ListenerExt;
    // Answers are one small write each: send them at once, not after the
    // client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(StartError::Serve)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
