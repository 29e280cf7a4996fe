//! One mapping from cellbox's [`Error`] to an HTTP status, for every API
//! `cellbox serve` speaks (envd's Connect codes follow from it).

use axum::http::StatusCode;

use crate::error::Error;

/// The HTTP status that says what `error` means to a client.
pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        // Bytes a decoder refused (a broken gzip upload): the caller's fault.
        Error::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ) =>
        {
            StatusCode::BAD_REQUEST
        }
        Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        // The sandbox is gone: what E2B's proxy answers for one that ended.
        Error::SandboxDied { .. } | Error::Closed => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_one_status() {
        let timeout = Error::Timeout {
            after: std::time::Duration::from_secs(1),
            restarted: false,
        };
        assert_eq!(status_of(&timeout), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(status_of(&Error::Closed), StatusCode::BAD_GATEWAY);
        assert_eq!(
            status_of(&Error::NotFound("x".into())),
            StatusCode::NOT_FOUND
        );
        let broken = Error::io("gzip", std::io::ErrorKind::InvalidData.into());
        assert_eq!(status_of(&broken), StatusCode::BAD_REQUEST);
        let disk = Error::io("write", std::io::ErrorKind::StorageFull.into());
        assert_eq!(status_of(&disk), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
