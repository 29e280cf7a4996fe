//! The Connect protocol (<https://connectrpc.com/docs/protocol>) as E2B's
//! SDKs speak it to envd: JSON messages, no compression, over HTTP/1.1.
//!
//! - unary calls: `POST /<service>/<method>` with a JSON body, answered with a
//!   JSON body, or an error status with `{"code", "message"}`;
//! - server streams: the request and every response message in an envelope
//!   (flags byte, big-endian `u32` length, JSON), ended by an end-of-stream
//!   envelope that carries the error, if any.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures_util::Stream;
use serde_json::{Map, Value, json};

use crate::error::Error;

/// Envelope flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;
/// Envelope flag of a compressed message (never sent by envd's clients here).
const COMPRESSED: u8 = 0x01;

/// The Connect error codes envd answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    DeadlineExceeded,
    Unimplemented,
    Internal,
    Unavailable,
}

impl Code {
    fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
        }
    }

    /// The HTTP status a unary error is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A call's failure: a code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        RpcError::new(Code::InvalidArgument, message)
    }

    fn json(&self) -> Value {
        json!({"code": self.code.name(), "message": self.message})
    }
}

impl From<Error> for RpcError {
    fn from(error: Error) -> Self {
        let code = match crate::serve::status::status_of(&error) {
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::BAD_REQUEST => Code::InvalidArgument,
            StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => Code::Unavailable,
            _ => Code::Internal,
        };
        RpcError::new(code, error.to_string())
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let headers = [(header::CONTENT_TYPE, "application/json")];
        (self.code.status(), headers, self.json().to_string()).into_response()
    }
}

/// The answer to a unary call.
pub fn unary(result: Result<Value, RpcError>) -> Response {
    match result {
        Ok(message) => {
            let headers = [(header::CONTENT_TYPE, "application/json")];
            (StatusCode::OK, headers, message.to_string()).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// The longest deadline a caller may ask for: longer ones are cut to it, so
/// that no time arithmetic on them can overflow.
pub const MAX_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The call's deadline from its `Connect-Timeout-Ms` header (none: no
/// deadline), at most [`MAX_DEADLINE`].
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let millis = headers.get("connect-timeout-ms")?.to_str().ok()?;
    let millis: u64 = millis.trim().parse().ok()?;
    Some(Duration::from_millis(millis).min(MAX_DEADLINE))
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or("").trim())
        .unwrap_or("")
}

/// The request of a unary call (a JSON body).
pub fn unary_request(headers: &HeaderMap, body: &[u8]) -> Result<Message, RpcError> {
    match content_type(headers) {
        "application/json" => Message::parse(body),
        other => Err(RpcError::invalid(format!(
            "cellbox's envd speaks Connect with JSON (application/json), not \"{other}\""
        ))),
    }
}

/// The messages of a streaming request (enveloped JSON; one for a server
/// stream, any number for a client stream).
pub fn stream_request(headers: &HeaderMap, mut body: &[u8]) -> Result<Vec<Message>, RpcError> {
    let kind = content_type(headers);
    if kind != "application/connect+json" {
        return Err(RpcError::invalid(format!(
            "cellbox's envd streams Connect with JSON (application/connect+json), not \"{kind}\""
        )));
    }
    let mut messages = Vec::new();
    while !body.is_empty() {
        let Some((&[flags, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
            return Err(RpcError::invalid("a truncated envelope in the request"));
        };
        let length = u32::from_be_bytes([a, b, c, d]) as usize;
        if rest.len() < length {
            return Err(RpcError::invalid("a truncated envelope in the request"));
        }
        if flags & COMPRESSED != 0 {
            return Err(RpcError::invalid("compressed messages are not supported"));
        }
        let (message, rest) = rest.split_at(length);
        if flags & END_STREAM == 0 {
            messages.push(Message::parse(message)?);
        }
        body = rest;
    }
    Ok(messages)
}

/// One message in its envelope.
pub fn envelope(message: &Value) -> Bytes {
    framed(0, message)
}

/// The end of a stream, with its error if it failed.
pub fn end_of_stream(error: Option<&RpcError>) -> Bytes {
    let end = match error {
        Some(error) => json!({"error": error.json()}),
        None => json!({}),
    };
    framed(END_STREAM, &end)
}

fn framed(flags: u8, message: &Value) -> Bytes {
    let json = message.to_string();
    let mut frame = Vec::with_capacity(5 + json.len());
    frame.push(flags);
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(json.as_bytes());
    Bytes::from(frame)
}

/// A streaming answer: the envelopes `frames` yields (which end with
/// [`end_of_stream`]).
pub fn stream_response(frames: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures_util::StreamExt as _;
    fallible_stream_response(frames.map(Ok))
}

/// [`stream_response`] whose frames may end in an error, which aborts the
/// response (the client's connection fails mid-request).
pub fn fallible_stream_response(
    frames: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    let body = Body::from_stream(frames);
    let headers = [(header::CONTENT_TYPE, "application/connect+json")];
    (StatusCode::OK, headers, body).into_response()
}

/// A stream that fails at once.
pub fn stream_error(error: RpcError) -> Response {
    stream_response(futures_util::stream::iter([end_of_stream(Some(&error))]))
}

/// proto3's JSON bytes: base64 with or without padding, either alphabet.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_BASE64: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE_BASE64: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

/// A JSON request message, read the way proto3's JSON mapping allows: fields
/// by their lowerCamelCase or original name, absent fields as defaults,
/// numbers also as strings, bytes as (URL-safe or standard) base64.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message(Map<String, Value>);

impl Message {
    fn parse(json: &[u8]) -> Result<Message, RpcError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(Message::default());
        }
        match serde_json::from_slice(json) {
            Ok(Value::Object(fields)) => Ok(Message(fields)),
            Ok(_) => Err(RpcError::invalid(
                "the request message is not a JSON object",
            )),
            Err(e) => Err(RpcError::invalid(format!(
                "the request is not valid JSON: {e}"
            ))),
        }
    }

    /// The field `name` (lowerCamelCase), or its snake_case spelling.
    pub fn field(&self, name: &str) -> Option<&Value> {
        let found = self.0.get(name).or_else(|| self.0.get(&snake_case(name)));
        found.filter(|value| !value.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.field(name).is_some()
    }

    pub fn string(&self, name: &str) -> Result<String, RpcError> {
        match self.field(name) {
            None => Ok(String::new()),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(wrong_type(name, "a string")),
        }
    }

    pub fn optional_string(&self, name: &str) -> Result<Option<String>, RpcError> {
        self.has(name).then(|| self.string(name)).transpose()
    }

    pub fn u32(&self, name: &str) -> Result<u32, RpcError> {
        let number = match self.field(name) {
            None => return Ok(0),
            Some(Value::Number(number)) => number.as_u64(),
            Some(Value::String(text)) => text.parse().ok(),
            Some(_) => None,
        };
        number
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| wrong_type(name, "a 32-bit unsigned integer"))
    }

    pub fn bool(&self, name: &str) -> Result<bool, RpcError> {
        match self.field(name) {
            None => Ok(false),
            Some(Value::Bool(value)) => Ok(*value),
            Some(_) => Err(wrong_type(name, "true or false")),
        }
    }

    pub fn message(&self, name: &str) -> Result<Message, RpcError> {
        match self.field(name) {
            None => Ok(Message::default()),
            Some(Value::Object(fields)) => Ok(Message(fields.clone())),
            Some(_) => Err(wrong_type(name, "an object")),
        }
    }

    pub fn bytes(&self, name: &str) -> Result<Vec<u8>, RpcError> {
        let text = self.string(name)?;
        STANDARD_BASE64
            .decode(&text)
            .or_else(|_| URL_SAFE_BASE64.decode(&text))
            .map_err(|_| wrong_type(name, "base64"))
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, RpcError> {
        match self.field(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| wrong_type(name, "a list of strings")),
            Some(_) => Err(wrong_type(name, "a list of strings")),
        }
    }

    pub fn string_map(&self, name: &str) -> Result<BTreeMap<String, String>, RpcError> {
        match self.field(name) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(fields)) => fields
                .iter()
                .map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                .collect::<Option<_>>()
                .ok_or_else(|| wrong_type(name, "a map of strings")),
            Some(_) => Err(wrong_type(name, "a map of strings")),
        }
    }

    /// An enum field, by its name or number, as its number.
    pub fn enumeration(&self, name: &str, values: &[(&str, i64)]) -> Result<i64, RpcError> {
        match self.field(name) {
            None => Ok(0),
            Some(Value::Number(number)) => number
                .as_i64()
                .ok_or_else(|| wrong_type(name, "an enum value")),
            Some(Value::String(text)) => values
                .iter()
                .find(|(value_name, _)| value_name == text)
                .map(|(_, number)| *number)
                .ok_or_else(|| RpcError::invalid(format!("{name}: unknown value \"{text}\""))),
            Some(_) => Err(wrong_type(name, "an enum value")),
        }
    }
}

fn wrong_type(name: &str, expected: &str) -> RpcError {
    RpcError::invalid(format!("the field \"{name}\" must be {expected}"))
}

fn snake_case(camel: &str) -> String {
    let mut snake = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    #[test]
    fn fields_by_either_name_with_proto3_defaults() {
        let message = unary_request(
            &headers("application/json"),
            br#"{"exitCode": "7", "symlink_target": "x", "flag": true, "data": "aGk", "url": "-_8"}"#,
        )
        .unwrap();
        assert_eq!(message.u32("exitCode").unwrap(), 7);
        assert_eq!(message.string("symlinkTarget").unwrap(), "x");
        assert!(message.bool("flag").unwrap());
        assert_eq!(message.bytes("data").unwrap(), b"hi");
        assert_eq!(message.bytes("url").unwrap(), [0xfb, 0xff]);
        assert_eq!(message.string("absent").unwrap(), "");
        assert_eq!(message.u32("absent").unwrap(), 0);
        assert!(message.message("absent").unwrap().0.is_empty());
        assert_eq!(
            message.string("flag").unwrap_err().code,
            Code::InvalidArgument
        );
        let empty = unary_request(&headers("application/json; charset=utf-8"), b"").unwrap();
        assert_eq!(empty, Message::default());
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        for (kind, body) in [
            ("application/json", &b"{not json"[..]),
            ("application/json", b"[1, 2]"),
            ("application/proto", b"\x0a\x01x"),
        ] {
            let error = unary_request(&headers(kind), body).unwrap_err();
            assert_eq!(error.code, Code::InvalidArgument, "{kind} {body:?}");
        }
    }

    #[test]
    fn envelopes_round_trip_and_truncation_is_refused() {
        let kind = headers("application/connect+json");
        let mut body = envelope(&json!({"a": 1})).to_vec();
        body.extend_from_slice(&envelope(&json!({"b": "x"})));
        body.extend_from_slice(&end_of_stream(None));
        let messages = stream_request(&kind, &body).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].string("b").unwrap(), "x");
        for cut in [1, 4, 6, body.len() - 1] {
            assert!(stream_request(&kind, &body[..cut]).is_err(), "cut at {cut}");
        }
        let mut compressed = envelope(&json!({})).to_vec();
        compressed[0] = COMPRESSED;
        assert!(stream_request(&kind, &compressed).is_err());
        assert!(stream_request(&headers("application/json"), &body).is_err());
    }

    #[test]
    fn end_of_stream_carries_the_error() {
        let error = RpcError::new(Code::NotFound, "no process 7");
        let frame = end_of_stream(Some(&error));
        assert_eq!(frame[0], END_STREAM);
        let length = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        let end: Value = serde_json::from_slice(&frame[5..]).unwrap();
        assert_eq!(length, frame.len() - 5);
        assert_eq!(end["error"]["code"], "not_found");
        assert_eq!(end["error"]["message"], "no process 7");
    }

    #[test]
    fn errors_map_to_codes_and_statuses() {
        let error = RpcError::from(Error::NotFound("/x".into()));
        assert_eq!(error.code, Code::NotFound);
        assert_eq!(error.into_response().status(), StatusCode::NOT_FOUND);
        let died = RpcError::from(Error::SandboxDied { reason: "x".into() });
        assert_eq!(died.code, Code::Unavailable);
        let mut with_deadline = HeaderMap::new();
        with_deadline.insert("connect-timeout-ms", "1500".parse().unwrap());
        assert_eq!(deadline(&with_deadline), Some(Duration::from_millis(1500)));
        assert_eq!(deadline(&HeaderMap::new()), None);
        let mut huge = HeaderMap::new();
        huge.insert("connect-timeout-ms", u64::MAX.to_string().parse().unwrap());
        assert_eq!(deadline(&huge), Some(MAX_DEADLINE));
    }
}
