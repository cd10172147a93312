//! The JSON admin API under `/api/v1/`. Every handler is one view of
//! [`super::views`]; errors are `{"error_code": NAME, "message": TEXT}`
//! with the stable error code's name, and an HTTP status that follows from
//! it. The OpenAPI document at `/api/v1/openapi.json` is derived from the
//! handlers and the types they return, so it cannot drift from them.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_proto::ErrorCode;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::Http;
use super::views::*;
use crate::BrokerError;
use crate::auth::acl::Caller;

/// An error, as every endpoint returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// The stable error code's name (`unknown_topic_or_partition`, …).
    pub error_code: String,
    /// What went wrong, for a person.
    pub message: String,
    #[serde(skip)]
    #[schema(ignore)]
    status: u16,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            error_code: code.to_string(),
            message: message.into(),
            status: status.as_u16(),
        }
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// The HTTP status of a broker error: what the caller got wrong is 4xx,
/// what the broker could not do is 5xx.
pub(super) fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as E;
    match code {
        E::UnknownTopicOrPartition | E::GroupIdNotFound | E::UnknownProducerId => {
            StatusCode::NOT_FOUND
        }
        E::TopicAlreadyExists
        | E::NonEmptyGroup
        | E::InvalidTxnState
        | E::ConcurrentTransactions
        | E::RebalanceInProgress
        | E::UnknownMemberId
        | E::UnstableOffsetCommit => StatusCode::CONFLICT,
        E::AuthorizationFailed => StatusCode::FORBIDDEN,
        E::AuthenticationFailed => StatusCode::UNAUTHORIZED,
        E::MessageTooLarge | E::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        E::BrokerShuttingDown | E::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
        E::RequestTimedOut => StatusCode::GATEWAY_TIMEOUT,
        E::StorageError | E::Unknown | E::NetworkError | E::CorruptMessage => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        let code = e.code();
        let status = if out_of_space(&e) {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            status_of(code)
        };
        ApiError::new(status, code.name(), e.to_string())
    }
}

/// Whether the broker failed for want of disk space (507, not 500).
fn out_of_space(e: &BrokerError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return true;
        }
        source = s.source();
    }
    false
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        let status = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, ErrorCode::InvalidRequest.name(), e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest.name(),
            e.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest.name(),
            e.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(&self)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub(super) fn routes() -> Router<Http> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/broker", get(broker))
        .route("/topics", get(list_topics).post(create_topic))
        .route("/topics/{name}", get(describe_topic).delete(delete_topic))
        .route(
            "/topics/{name}/partitions/{partition}/records",
            get(records),
        )
        .route("/producers", get(producers))
        .route("/transactions", get(transactions))
        .route("/transactions/{id}/abort", post(abort_transaction))
        .route("/groups", get(groups))
        .route("/groups/{id}", get(describe_group))
        .route("/groups/{id}/reset-offsets", post(reset_offsets))
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry admin API",
        description = "The broker's state and admin operations, as the console shows them."
    ),
    paths(
        broker,
        list_topics,
        create_topic,
        describe_topic,
        delete_topic,
        records,
        producers,
        transactions,
        abort_transaction,
        groups,
        describe_group,
        reset_offsets
    ),
    components(schemas(ApiError))
)]
pub struct ApiDoc;

async fn openapi() -> Response {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Json(doc).into_response()
}

/// The broker: version, uptime, listeners, storage, recent throughput.
#[utoipa::path(get, path = "/api/v1/broker", responses(
    (status = 200, body = BrokerView),
    (status = 401, body = ApiError), (status = 403, body = ApiError)))]
async fn broker(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
) -> ApiResult<BrokerView> {
    Ok(Json(http.broker(&who)?))
}

/// Topics the caller may describe.
#[utoipa::path(get, path = "/api/v1/topics", responses(
    (status = 200, body = Vec<TopicSummary>), (status = 401, body = ApiError)))]
async fn list_topics(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
) -> ApiResult<Vec<TopicSummary>> {
    Ok(Json(http.topics(&who)))
}

/// Creates a topic.
#[utoipa::path(post, path = "/api/v1/topics", request_body = CreateTopic, responses(
    (status = 201, body = TopicView),
    (status = 400, body = ApiError), (status = 401, body = ApiError),
    (status = 403, body = ApiError), (status = 409, body = ApiError),
    (status = 413, body = ApiError), (status = 415, body = ApiError),
    (status = 500, body = ApiError), (status = 507, body = ApiError)))]
async fn create_topic(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    body: Result<Json<CreateTopic>, JsonRejection>,
) -> Result<(StatusCode, Json<TopicView>), ApiError> {
    let Json(req) = body?;
    Ok((
        StatusCode::CREATED,
        Json(http.create_topic(&who, req).await?),
    ))
}

/// One topic, partition by partition.
#[utoipa::path(get, path = "/api/v1/topics/{name}",
    params(("name" = String, Path, description = "The topic")),
    responses((status = 200, body = TopicView),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn describe_topic(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<TopicView> {
    let Path(name) = name?;
    Ok(Json(http.topic(&who, &name)?))
}

/// Deletes a topic and its data.
#[utoipa::path(delete, path = "/api/v1/topics/{name}",
    params(("name" = String, Path, description = "The topic")),
    responses((status = 204, description = "Deleted"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_topic(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(name) = name?;
    http.delete_topic(&who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Records of one partition, from an offset or a time.
#[utoipa::path(get, path = "/api/v1/topics/{name}/partitions/{partition}/records",
    params(("name" = String, Path, description = "The topic"),
        ("partition" = u32, Path, description = "The partition"), BrowseQuery),
    responses((status = 200, body = RecordsPage),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn records(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    path: Result<Path<(String, u32)>, PathRejection>,
    query: Result<Query<BrowseQuery>, QueryRejection>,
) -> ApiResult<RecordsPage> {
    let Path((name, partition)) = path?;
    let Query(q) = query?;
    Ok(Json(http.records(&who, &name, partition, &q).await?))
}

/// Producer ids and what each partition remembers of them.
#[utoipa::path(get, path = "/api/v1/producers", responses(
    (status = 200, body = Vec<ProducerView>), (status = 401, body = ApiError)))]
async fn producers(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
) -> ApiResult<Vec<ProducerView>> {
    Ok(Json(http.producers(&who)))
}

/// Transactional ids and their transactions.
#[utoipa::path(get, path = "/api/v1/transactions", responses(
    (status = 200, body = Vec<TransactionView>), (status = 401, body = ApiError)))]
async fn transactions(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
) -> ApiResult<Vec<TransactionView>> {
    Ok(Json(http.transactions(&who)))
}

/// Aborts a transactional id's open transaction (as `ferry txn abort`).
#[utoipa::path(post, path = "/api/v1/transactions/{id}/abort",
    params(("id" = String, Path, description = "The transactional id")),
    responses((status = 204, description = "Aborted"),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn abort_transaction(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    http.abort_transaction(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Consumer groups, with their lag.
#[utoipa::path(get, path = "/api/v1/groups", responses(
    (status = 200, body = Vec<GroupSummary>), (status = 401, body = ApiError)))]
async fn groups(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
) -> ApiResult<Vec<GroupSummary>> {
    Ok(Json(http.groups(&who).await))
}

/// One group: members, assignments, offsets and lag.
#[utoipa::path(get, path = "/api/v1/groups/{id}",
    params(("id" = String, Path, description = "The group")),
    responses((status = 200, body = GroupView),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn describe_group(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<GroupView> {
    let Path(id) = id?;
    Ok(Json(http.group(&who, &id).await?))
}

/// Moves an empty group's committed offsets (as `ferry group
/// reset-offsets`).
#[utoipa::path(post, path = "/api/v1/groups/{id}/reset-offsets",
    params(("id" = String, Path, description = "The group")),
    request_body = ResetOffsets,
    responses((status = 200, body = Vec<ResetResult>),
        (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 413, body = ApiError),
        (status = 415, body = ApiError)))]
async fn reset_offsets(
    State(http): State<Http>,
    Extension(who): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ResetOffsets>, JsonRejection>,
) -> ApiResult<Vec<ResetResult>> {
    let Path(id) = id?;
    let Json(req) = body?;
    Ok(Json(http.reset_offsets(&who, &id, req).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's limits are literals in attributes; they must be the
    /// broker's.
    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let create = &doc["components"]["schemas"]["CreateTopic"]["properties"];
        assert_eq!(
            create["partitions"]["maximum"],
            crate::MAX_PARTITIONS_PER_TOPIC,
            "{create}"
        );
        assert_eq!(
            create["name"]["maxLength"],
            crate::names::MAX_NAME_BYTES,
            "{create}"
        );
        let browse = doc["paths"]["/api/v1/topics/{name}/partitions/{partition}/records"]["get"]
            ["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .cloned()
            .unwrap();
        assert_eq!(browse["schema"]["maximum"], MAX_BROWSE_RECORDS, "{browse}");
    }

    #[test]
    fn every_error_code_has_a_status_and_a_name() {
        for code in ErrorCode::ALL {
            let s = status_of(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code}: {s}");
            assert!(!code.name().is_empty());
        }
    }
}
