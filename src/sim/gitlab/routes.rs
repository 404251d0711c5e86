//! The HTTP side of the simulated GitLab: routing, auth, faults, parameter parsing and
//! pagination. The rules and JSON live in `state.rs` and `state/`.
//!
//! Routing matches the raw path, so a project path arrives as one `%2F`-encoded segment (as on
//! GitLab), and axum's `Path` decodes it. Every request goes through [`handle`]: global
//! latency, then a fault rule if one applies (rate limits and 5xx come before auth, as
//! Rack::Attack and proxies answer before the API does), then the `PRIVATE-TOKEN` check,
//! then the endpoint.

use std::sync::Arc;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, Request, State as AxumState},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use chrono::Utc;
use serde_json::{Map, Value};

use super::{
    GitLabFault, RequestRecord, Route,
    state::{ApiError, Inner, State},
};

mod people;
mod repository;

type Shared = Arc<Inner>;
type Query2 = Query<Vec<(String, String)>>;

/// GitLab's default page size.
const DEFAULT_PER_PAGE: u64 = 20;

/// GitLab's largest page size; larger requests are clamped to it.
const MAX_PER_PAGE: u64 = 100;

/// The throttle's plain-text body (GitLab's `DEFAULT_RATE_LIMITING_RESPONSE_TEXT` plus newline).
const RETRY_LATER: &str = "Retry later\n";

/// The per-minute quota advertised in `RateLimit-Limit` on throttled answers.
const ADVERTISED_LIMIT: u32 = 600;

pub(super) fn router(inner: Shared, max_body: usize) -> Router {
    const MR: &str = "/api/v4/projects/{project}/merge_requests/{iid}";
    Router::new()
        .route(MR, get(get_mr).put(update_mr))
        .route(&format!("{MR}/versions"), get(versions))
        .route(&format!("{MR}/diffs"), get(diffs))
        .route(
            &format!("{MR}/discussions"),
            get(list_discussions).post(create_discussion),
        )
        .route(
            &format!("{MR}/discussions/{{discussion}}"),
            get(get_discussion).put(resolve_discussion),
        )
        .route(
            &format!("{MR}/discussions/{{discussion}}/notes"),
            post(reply),
        )
        .route(&format!("{MR}/commits"), get(mr_commits))
        .route(
            &format!("{MR}/draft_notes"),
            get(list_draft_notes).post(create_draft_note),
        )
        .route(
            &format!("{MR}/draft_notes/bulk_publish"),
            post(bulk_publish_draft_notes),
        )
        .route(
            &format!("{MR}/draft_notes/{{draft}}"),
            delete(delete_draft_note),
        )
        .route(&format!("{MR}/notes"), get(list_notes).post(create_note))
        .route(
            &format!("{MR}/notes/{{note}}"),
            get(get_note).put(update_note),
        )
        .merge(people::router())
        .merge(repository::router())
        .fallback(|| async { error_response(&ApiError::grape_status(404, "404 Not Found")) })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&inner), record))
        .with_state(inner)
}

/// Logs every request with the route that handled it and the status answered.
async fn record(AxumState(inner): AxumState<Shared>, request: Request, next: Next) -> Response {
    let arrived = std::time::Instant::now();
    let method = request.method().to_string();
    let uri = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let response = next.run(request).await;
    let route = response.extensions().get::<Route>().copied();
    inner.lock().requests.push(RequestRecord {
        method,
        uri,
        route,
        status: response.status().as_u16(),
        arrived,
    });
    response
}

/// What a fault asks the endpoint to do besides its normal work.
#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    /// Do the work, then answer 500.
    error_after: bool,
    /// Create discussions as plain threads.
    not_inline: bool,
    /// Do the work, then hold the answer back this long.
    hang_after: Option<std::time::Duration>,
}

/// Latency, faults, auth, then `work` under the state lock; tags the answer with its route.
async fn handle(
    inner: &Inner,
    route: Route,
    headers: &HeaderMap,
    work: impl FnOnce(&mut State, &str, Flags) -> Result<Response, ApiError>,
) -> Response {
    let mut response = match enter(inner, route, headers).await {
        Err(early) => early,
        Ok(flags) => {
            let result = {
                let mut state = inner.lock();
                work(&mut state, &inner.base_url, flags)
            };
            if let (Ok(_), Some(hang)) = (&result, flags.hang_after) {
                inner.stopper.sleep(hang).await;
            }
            match result {
                Ok(_) if flags.error_after => error_response(&ApiError::internal()),
                Ok(response) => response,
                Err(error) => error_response(&error),
            }
        }
    };
    response.extensions_mut().insert(route);
    response
}

async fn enter(inner: &Inner, route: Route, headers: &HeaderMap) -> Result<Flags, Response> {
    let (latency, fault) = {
        let mut state = inner.lock();
        (state.latency, state.take_fault(route))
    };
    let extra = match &fault {
        Some(GitLabFault::Delay(delay)) => *delay,
        _ => std::time::Duration::ZERO,
    };
    if !inner.stopper.sleep(latency + extra).await {
        return Err(error_response(&ApiError::message(
            503,
            "503 Service Unavailable (the simulated GitLab is stopping)",
        )));
    }
    let mut flags = Flags::default();
    match fault {
        Some(GitLabFault::RateLimited { retry_after_secs }) => {
            return Err(rate_limited(Some(retry_after_secs)));
        }
        Some(GitLabFault::RateLimitedWithoutHint) => return Err(rate_limited(None)),
        Some(GitLabFault::ServerError) => return Err(error_response(&ApiError::internal())),
        Some(GitLabFault::BadGateway) => return Err(bad_gateway()),
        Some(GitLabFault::ServerErrorAfterStore) => flags.error_after = true,
        Some(GitLabFault::NotInline) => flags.not_inline = true,
        Some(GitLabFault::StoreThenHang(hang)) => flags.hang_after = Some(hang),
        Some(GitLabFault::Delay(_)) | None => {}
    }
    if !authorized(&inner.token, headers) {
        return Err(error_response(&ApiError::message(401, "401 Unauthorized")));
    }
    Ok(flags)
}

/// `PRIVATE-TOKEN: t` or `Authorization: Bearer t` (both accepted by GitLab).
fn authorized(token: &str, headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let private = text(header::HeaderName::from_static("private-token"));
    let bearer =
        text(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    !token.is_empty() && (private.as_deref() == Some(token) || bearer.as_deref() == Some(token))
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &error.body)
}

impl ApiError {
    /// `{"error": text}` with any status (GitLab's unknown-route answer).
    fn grape_status(status: u16, text: &str) -> Self {
        ApiError {
            status,
            ..ApiError::grape(text)
        }
    }
}

/// Rack::Attack's throttle answer.
fn rate_limited(retry_after_secs: Option<u64>) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "text/plain")],
        RETRY_LATER,
    )
        .into_response();
    if let Some(secs) = retry_after_secs {
        let reset = Utc::now() + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(60));
        let headers = response.headers_mut();
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put("retry-after", secs.to_string());
        put("ratelimit-name", "throttle_authenticated_api".to_owned());
        put("ratelimit-limit", ADVERTISED_LIMIT.to_string());
        put("ratelimit-observed", (ADVERTISED_LIMIT + 1).to_string());
        put("ratelimit-remaining", "0".to_owned());
        put("ratelimit-reset", reset.timestamp().to_string());
        put(
            "ratelimit-resettime",
            reset.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        );
    }
    response
}

/// A reverse proxy's answer when GitLab's workers are down.
fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>\n",
    )
        .into_response()
}

// ---- parameters ------------------------------------------------------------------------

/// Grape merges query and body parameters; the body may be JSON or form-encoded (where
/// nested keys look like `position[new_line]`). Values from a form or query stay strings,
/// as Grape sees them before coercion.
fn params(
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let mut object = Map::new();
    for (key, value) in query {
        insert_bracketed(&mut object, key, Value::String(value.clone()));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(object));
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        for (key, value) in url::form_urlencoded::parse(body) {
            insert_bracketed(&mut object, &key, Value::String(value.into_owned()));
        }
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => object.extend(fields),
            _ => {
                return Err(ApiError::message(
                    400,
                    "400 Bad request - the request body is not a JSON object",
                ));
            }
        }
    }
    Ok(Value::Object(object))
}

/// `a[b][c]=v` → `{"a":{"b":{"c":v}}}`; a key without brackets (or malformed) is plain.
fn insert_bracketed(object: &mut Map<String, Value>, key: &str, value: Value) {
    let Some((head, rest)) = key.split_once('[') else {
        object.insert(key.to_owned(), value);
        return;
    };
    let mut path = vec![head.to_owned()];
    let mut rest = rest;
    loop {
        let Some((segment, after)) = rest.split_once(']') else {
            object.insert(key.to_owned(), value);
            return;
        };
        path.push(segment.to_owned());
        if after.is_empty() {
            break;
        }
        let Some(next) = after.strip_prefix('[') else {
            object.insert(key.to_owned(), value);
            return;
        };
        rest = next;
    }
    let mut current = object;
    let last = path.len() - 1;
    for (index, segment) in path.into_iter().enumerate() {
        if index == last {
            current.insert(segment, value);
            return;
        }
        let entry = current
            .entry(segment)
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Some(next) = entry.as_object_mut() else {
            return;
        };
        current = next;
    }
}

fn query_value<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// One page of `items` with GitLab's pagination headers (`x-page`, `x-per-page`,
/// `x-next-page` (empty on the last page), `x-prev-page`, `x-total`, `x-total-pages`, `link`).
fn paginate(
    items: Vec<Value>,
    query: &[(String, String)],
    uri: &Uri,
    base_url: &str,
) -> Result<Response, ApiError> {
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match query_value(query, name) {
            None | Some("") => Ok(default),
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| ApiError::grape(&format!("{name} is invalid"))),
        }
    };
    let page = number("page", 1)?.max(1);
    let per_page = number("per_page", DEFAULT_PER_PAGE)?.clamp(1, MAX_PER_PAGE);
    let total = items.len() as u64;
    let total_pages = total.div_ceil(per_page).max(1);
    let start = usize::try_from((page - 1).saturating_mul(per_page)).unwrap_or(usize::MAX);
    let items: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(usize::try_from(per_page).unwrap_or(usize::MAX))
        .collect();

    let page_url = |target: u64| {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in query {
            if key != "page" && key != "per_page" {
                serializer.append_pair(key, value);
            }
        }
        serializer.append_pair("page", &target.to_string());
        serializer.append_pair("per_page", &per_page.to_string());
        format!("{base_url}{}?{}", uri.path(), serializer.finish())
    };
    let next = (page < total_pages).then_some(page + 1);
    let prev = (page > 1).then(|| (page - 1).min(total_pages));
    let mut links = Vec::new();
    if let Some(prev) = prev {
        links.push(format!("<{}>; rel=\"prev\"", page_url(prev)));
    }
    if let Some(next) = next {
        links.push(format!("<{}>; rel=\"next\"", page_url(next)));
    }
    links.push(format!("<{}>; rel=\"first\"", page_url(1)));
    links.push(format!("<{}>; rel=\"last\"", page_url(total_pages)));

    let mut response = json_response(StatusCode::OK, &Value::Array(items));
    let headers = response.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    put("x-page", page.to_string());
    put("x-per-page", per_page.to_string());
    put(
        "x-next-page",
        next.map(|n| n.to_string()).unwrap_or_default(),
    );
    put(
        "x-prev-page",
        prev.map(|p| p.to_string()).unwrap_or_default(),
    );
    put("x-total", total.to_string());
    put("x-total-pages", total_pages.to_string());
    put("link", links.join(", "));
    Ok(response)
}

// ---- handlers --------------------------------------------------------------------------

async fn get_mr(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::MergeRequest, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        Ok(json_response(StatusCode::OK, &state.get_mr(key, base)?))
    })
    .await
}

async fn update_mr(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &inner,
        Route::UpdateMergeRequest,
        &headers,
        |state, base, _| {
            let key = state.api_mr(&project, &iid)?;
            let params = params(&query, &headers, &body)?;
            Ok(json_response(
                StatusCode::OK,
                &state.update_mr(key, &params, base)?,
            ))
        },
    )
    .await
}

async fn versions(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::Versions, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        paginate(state.versions(key)?, &query, &uri, base)
    })
    .await
}

async fn diffs(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::Diffs, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        paginate(state.diffs(key)?, &query, &uri, base)
    })
    .await
}

async fn list_discussions(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(
        &inner,
        Route::ListDiscussions,
        &headers,
        |state, base, _| {
            let key = state.api_mr(&project, &iid)?;
            paginate(state.list_discussions(key, base)?, &query, &uri, base)
        },
    )
    .await
}

async fn get_discussion(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, discussion)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    handle(
        &inner,
        Route::ListDiscussions,
        &headers,
        |state, base, _| {
            let key = state.api_mr(&project, &iid)?;
            let value = state.get_discussion(key, &discussion, base)?;
            Ok(json_response(StatusCode::OK, &value))
        },
    )
    .await
}

async fn create_discussion(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &inner,
        Route::CreateDiscussion,
        &headers,
        |state, base, flags| {
            let key = state.api_mr(&project, &iid)?;
            let params = params(&query, &headers, &body)?;
            let value = state.create_discussion(key, &params, flags.not_inline, base)?;
            Ok(json_response(StatusCode::CREATED, &value))
        },
    )
    .await
}

async fn reply(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, discussion)): Path<(String, String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &inner,
        Route::ReplyToDiscussion,
        &headers,
        |state, base, _| {
            let key = state.api_mr(&project, &iid)?;
            let params = params(&query, &headers, &body)?;
            let value = state.reply(key, &discussion, &params, base)?;
            Ok(json_response(StatusCode::CREATED, &value))
        },
    )
    .await
}

async fn resolve_discussion(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, discussion)): Path<(String, String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &inner,
        Route::ResolveDiscussion,
        &headers,
        |state, base, _| {
            let key = state.api_mr(&project, &iid)?;
            let params = params(&query, &headers, &body)?;
            let value = state.resolve(key, &discussion, &params, base)?;
            Ok(json_response(StatusCode::OK, &value))
        },
    )
    .await
}

async fn list_notes(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::ListNotes, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        let notes = state.list_notes(
            key,
            query_value(&query, "sort"),
            query_value(&query, "order_by"),
            base,
        )?;
        paginate(notes, &query, &uri, base)
    })
    .await
}

async fn get_note(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, note)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::ListNotes, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        Ok(json_response(
            StatusCode::OK,
            &state.get_note(key, &note, base)?,
        ))
    })
    .await
}

async fn create_note(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&inner, Route::CreateNote, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        let params = params(&query, &headers, &body)?;
        let value = state.create_note(key, &params, base)?;
        Ok(json_response(StatusCode::CREATED, &value))
    })
    .await
}

async fn update_note(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, note)): Path<(String, String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&inner, Route::UpdateNote, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        let params = params(&query, &headers, &body)?;
        let value = state.update_note(key, &note, &params, base)?;
        Ok(json_response(StatusCode::OK, &value))
    })
    .await
}

async fn mr_commits(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::MrCommits, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        paginate(state.mr_commits(key, base)?, &query, &uri, base)
    })
    .await
}

async fn list_draft_notes(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::ListDraftNotes, &headers, |state, base, _| {
        let key = state.api_mr(&project, &iid)?;
        paginate(state.list_draft_notes(key)?, &query, &uri, base)
    })
    .await
}

async fn create_draft_note(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    Query(query): Query2,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&inner, Route::CreateDraftNote, &headers, |state, _, _| {
        let key = state.api_mr(&project, &iid)?;
        let params = params(&query, &headers, &body)?;
        let value = state.create_draft_note(key, &params)?;
        Ok(json_response(StatusCode::CREATED, &value))
    })
    .await
}

async fn delete_draft_note(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid, draft)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    handle(&inner, Route::DeleteDraftNote, &headers, |state, _, _| {
        let key = state.api_mr(&project, &iid)?;
        state.delete_draft_note(key, &draft)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

async fn bulk_publish_draft_notes(
    AxumState(inner): AxumState<Shared>,
    Path((project, iid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    handle(
        &inner,
        Route::BulkPublishDraftNotes,
        &headers,
        |state, _, _| {
            let key = state.api_mr(&project, &iid)?;
            state.bulk_publish(key)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_keys_with_brackets_nest_like_grape_params() {
        let mut object = Map::new();
        insert_bracketed(&mut object, "position[new_line]", Value::from("18"));
        insert_bracketed(&mut object, "position[position_type]", Value::from("text"));
        insert_bracketed(&mut object, "body", Value::from("b"));
        assert_eq!(
            Value::Object(object),
            serde_json::json!({"position": {"new_line": "18", "position_type": "text"}, "body": "b"})
        );
    }

    #[test]
    fn only_the_configured_token_is_authorized() {
        let mut headers = HeaderMap::new();
        assert!(!authorized("t", &headers));
        headers.insert("private-token", HeaderValue::from_static("t"));
        assert!(authorized("t", &headers));
        assert!(!authorized("other", &headers));
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(authorized("t", &bearer));
    }
}
