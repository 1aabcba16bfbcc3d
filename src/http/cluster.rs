//! `GET /v1/cluster`.

use super::Shared;
use crate::auth::Principal;
use crate::service::{ClusterView, Result};
use axum::Json;
use axum::extract::{Extension, State};

pub(super) async fn cluster(
    State(state): Shared,
    Extension(who): Extension<Principal>,
) -> Result<Json<ClusterView>> {
    Ok(Json(state.services.cluster.view(&who).await?))
}
