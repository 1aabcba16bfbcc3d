//! Middleware: authentication (the principal goes to the handlers, which hand it to the
//! services) and the limit on requests running at once.

use super::{AppState, Shared};
use crate::auth::{Auth, Principal};
use crate::service::Error;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (kind, token) = value.trim().split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates the request and hands the [`Principal`] to the handler as an extension: 401
/// without a valid token, except for `/healthz` (and `/metrics` with `auth.public_metrics`),
/// which are open. What the principal may do is checked by the services, per operation.
pub async fn authenticate(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let open = path == "/healthz" || (path == "/metrics" && auth.public_metrics());
    let principal = if open {
        Principal::anyone()
    } else {
        match auth.authenticate(bearer(&request)) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Answers 503 (with `Retry-After`) rather than queueing when `limits.max_concurrent_requests`
/// requests are running already; `/healthz` and `/metrics` are never turned away. The permit is
/// held until the response body has been sent, so streamed answers count while they stream.
pub async fn limit_concurrency(State(state): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(request).await;
    }
    let state: &AppState = &state;
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("strata_requests_refused_total", "reason" => "busy").increment(1);
        return Error::Busy(format!(
            "the server is running its limit of {} requests at once; retry shortly",
            state.services.limits().max_concurrent_requests
        ))
        .into_response();
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(PermitStream {
        inner: body.into_data_stream(),
        _permit: permit,
    });
    Response::from_parts(parts, body)
}

/// A response body that holds a concurrency permit until it is dropped.
struct PermitStream<S> {
    inner: S,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<S: futures::Stream + Unpin> futures::Stream for PermitStream<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}
