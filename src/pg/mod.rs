//! The PostgreSQL wire protocol front end: psql, JDBC, psycopg, asyncpg and BI tools query strata
//! as they would a PostgreSQL server.
//!
//! A thin adapter over the service layer, on pgwire's protocol code: [`startup`] checks the
//! password (the token, as over HTTP) and opens a [`session::Session`]; [`query`] answers the simple
//! and extended query protocols, sending every statement through the [`QueryService`] (read-only
//! SQL, grants on the plan, deadlines, the memory pool) with the PostgreSQL flavour of the engine,
//! and answering `SET`/`SHOW`/`BEGIN`… from the session's own settings; [`error`] maps the
//! service's errors to SQLSTATEs in one place. Cancel requests stop the running query.

mod copy;
mod encode;
mod error;
mod params;
mod query;
mod rows;
mod session;
mod startup;

use crate::auth::Auth;
use crate::service::Services;
use bytes::Bytes;
use parking_lot::Mutex;
use pgwire::api::PgWireServerHandlers;
use pgwire::api::cancel::CancelHandler;
use pgwire::messages::cancel::CancelRequest;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long connections may go on after shutdown began.
const DRAIN: Duration = Duration::from_secs(10);

/// Where a connection's running query can be cancelled: the token of its current query.
pub(crate) type CancelSlot = Arc<Mutex<CancellationToken>>;

/// The cancel slot of each connection, by its process id and secret key.
#[derive(Default)]
pub(crate) struct Cancels {
    slots: Mutex<HashMap<(i32, Bytes), CancelSlot>>,
}

impl Cancels {
    fn cancel(&self, pid: i32, key: &Bytes) {
        let slot = self.slots.lock().get(&(pid, key.clone())).cloned();
        if let Some(slot) = slot {
            slot.lock().cancel();
        }
    }
}

/// Everything the connections share.
pub struct Front {
    services: Services,
    auth: Arc<Auth>,
    cancels: Arc<Cancels>,
    pids: Arc<pgwire::api::RandomPidSecretKeyGenerator>,
    /// Queries running at once, shared with the other front ends (`limits.max_concurrent_requests`).
    in_flight: Arc<Semaphore>,
}

impl Front {
    /// The front end over `services`, checking passwords with `auth`, running at most as many
    /// queries at once as `in_flight` has permits.
    pub fn new(services: Services, auth: Arc<Auth>, in_flight: Arc<Semaphore>) -> Self {
        Self {
            services,
            auth,
            cancels: Arc::default(),
            pids: Arc::default(),
            in_flight,
        }
    }
}

impl PgWireServerHandlers for Front {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        Arc::new(query::Handler::new(self))
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::new(query::Handler::new(self))
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(startup::Startup::new(self))
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(CancelByKey(self.cancels.clone()))
    }
}

struct CancelByKey(Arc<Cancels>);

#[async_trait::async_trait]
impl CancelHandler for CancelByKey {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.0.cancel(request.pid, &request.secret_key.to_bytes());
    }
}

/// Serves PostgreSQL clients on `listener` until `shutdown`, at most `max_connections` at once;
/// `tls` answers `SSLRequest`. Connections still open [`DRAIN`] after shutdown are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    front: Arc<Front>,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let tls = tls.map(pgwire::tokio::TlsAcceptor::from);
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut running = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a PostgreSQL connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("strata_requests_refused_total", "reason" => "pg_connections")
                .increment(1);
            running.spawn(refuse(socket, max_connections));
            continue;
        };
        let (front, tls) = (front.clone(), tls.clone());
        running.spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, front).await {
                tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error");
            }
            drop(permit);
        });
    }
    let drained = tokio::time::timeout(DRAIN, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!("closing PostgreSQL connections still open at shutdown");
        running.shutdown().await;
    }
}

/// Tells a client over the connection limit so, as PostgreSQL does, and closes.
async fn refuse(mut socket: tokio::net::TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt;
    let message = format!(
        "sorry, too many clients already: this server takes {max} PostgreSQL connections (pg.max_connections)"
    );
    let mut body = Vec::new();
    for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "53300")] {
        body.push(tag);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(b'M');
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(&[0, 0]);
    let mut frame = vec![b'E'];
    frame.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&frame)).await;
}
