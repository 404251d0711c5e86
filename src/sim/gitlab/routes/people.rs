//! The endpoints of conversations: the token's user, a member's role, award emoji.

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State as AxumState},
    http::{HeaderMap, StatusCode, Uri},
    response::Response,
    routing::get,
};

use super::{Query2, Route, Shared, State, handle, json_response, paginate, params};

pub(super) fn router() -> Router<Shared> {
    Router::new()
        .route("/api/v4/user", get(current_user))
        .route("/api/v4/projects/{project}/members/all/{user}", get(member))
        .route(
            "/api/v4/projects/{project}/merge_requests/{iid}/notes/{note}/award_emoji",
            get(list_awards).post(create_award),
        )
}

async fn current_user(AxumState(inner): AxumState<Shared>, headers: HeaderMap) -> Response {
    handle(&inner, Route::CurrentUser, &headers, |_, base, _| {
        Ok(json_response(StatusCode::OK, &State::current_user(base)))
    })
    .await
}

async fn member(
    AxumState(inner): AxumState<Shared>,
    Path((project, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::Member, &headers, |state, base, _| {
        Ok(json_response(
            StatusCode::OK,
            &state.member(&project, &user, base)?,
        ))
    })
    .await
}

async fn list_awards(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, note)): Path<(String, String, String)>,
    Query(query): Query2,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::ListAwardEmoji, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        paginate(state.list_awards(key, &note, base)?, &query, &uri, base)
    })
    .await
}

async fn create_award(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, note)): Path<(String, String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &inner,
        Route::CreateAwardEmoji,
        &headers,
        |state, base, _| {
            let key = state.api_mr(&project, &iid)?;
            let params = params(&query, &headers, &body)?;
            let value = state.create_award(key, &note, &params, base)?;
            Ok(json_response(StatusCode::CREATED, &value))
        },
    )
    .await
}
