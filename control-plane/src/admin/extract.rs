//! `Path` and `Query` whose rejections are the Admin API's JSON error (`AdminError::Invalid`)
//! rather than axum's plain-text 400, so every error answer has one shape.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AdminError;

pub struct AdminPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AdminPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| AdminPath(v))
            .map_err(|e| AdminError::invalid("path", e.body_text()))
    }
}

pub struct AdminQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AdminQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| AdminQuery(v))
            .map_err(|e| AdminError::invalid("query", e.body_text()))
    }
}
