//! Why a call on something the server keeps (a secret, a volume) was
//! refused, each with the message its answer carries.

/// A refused call; [`crate::serve::api::ApiError`] gives each its status.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request makes no sense (400).
    Invalid(String),
    /// No such thing (404).
    NotFound(String),
    /// Its name is taken (409).
    NameTaken(String),
    /// The server keeps as many as it may (429).
    Full(String),
}
