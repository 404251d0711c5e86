//! The repository endpoints: a raw file at a ref, and the comparison of two refs.

use axum::{
    Router,
    extract::{Path, Query, State as AxumState},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::{ApiError, Query2, Route, Shared, handle, json_response, query_value};

pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route(
            "/api/v4/projects/{project}/repository/files/{file}/raw",
            get(raw_file),
        )
        .route(
            "/api/v4/projects/{project}/repository/compare",
            get(compare),
        )
}

async fn raw_file(
    AxumState(inner): AxumState<Shared>,
    Path((project, file)): Path<(String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::RawFile, &headers, |state, _, _| {
        let git_ref = query_value(&query, "ref")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ApiError::grape("ref is missing"))?;
        let content = state.raw_file(&project, &file, git_ref)?;
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            content,
        )
            .into_response())
    })
    .await
}

async fn compare(
    AxumState(inner): AxumState<Shared>,
    Path(project): Path<String>,
    Query(query): Query2,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::Compare, &headers, |state, base, _| {
        let required = |name: &str| {
            query_value(&query, name)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| ApiError::grape(&format!("{name} is missing")))
        };
        let value = state.compare(&project, required("from")?, required("to")?, base)?;
        Ok(json_response(StatusCode::OK, &value))
    })
    .await
}
