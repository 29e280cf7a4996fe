//! Signed file URLs: what E2B's `download_url` and `upload_url` make for a
//! secure sandbox, `/files?path=…&username=…&signature=v1_…` with an
//! optional `signature_expiration` (Unix seconds). The signature is
//! `v1_` + unpadded base64 of SHA-256 over `path:operation:user:token` (and
//! `:expiration` when there is one), `token` being the sandbox's access
//! token, so it proves the URL's maker holds that token. Such a URL names no
//! sandbox (`E2B_SANDBOX_URL` is one address for all), so the signature also
//! says which: the one whose token makes it.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha256};

/// A signed `/files` request's query.
#[derive(Debug, PartialEq, Eq)]
pub struct SignedFileUrl {
    path: String,
    /// `read` (download) or `write` (upload).
    operation: &'static str,
    user: String,
    signature: String,
    expiration: Option<i64>,
}

/// Why a signed URL is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Expired,
    /// No sandbox's token makes this signature.
    NoMatch,
}

impl SignedFileUrl {
    /// The signed request in `method` `path_and_query`, if it is one.
    pub fn parse(method: &str, path: &str, query: Option<&str>) -> Option<SignedFileUrl> {
        let operation = match (method, path) {
            ("GET", "/files") => "read",
            ("POST", "/files") => "write",
            _ => return None,
        };
        let mut url = SignedFileUrl {
            path: String::new(),
            operation,
            user: String::new(),
            signature: String::new(),
            expiration: None,
        };
        for (key, value) in form_urlencoded::parse(query?.as_bytes()) {
            match &*key {
                "path" => url.path = value.into_owned(),
                "username" => url.user = value.into_owned(),
                "signature" => url.signature = value.into_owned(),
                "signature_expiration" => url.expiration = Some(value.parse().ok()?),
                _ => {}
            }
        }
        (!url.signature.is_empty()).then_some(url)
    }

    /// The signature `token` makes for this request.
    fn made_with(&self, token: &str) -> String {
        let mut text = format!("{}:{}:{}:{token}", self.path, self.operation, self.user);
        if let Some(expiration) = self.expiration {
            text.push_str(&format!(":{expiration}"));
        }
        format!(
            "v1_{}",
            STANDARD_NO_PAD.encode(Sha256::digest(text.as_bytes()))
        )
    }

    /// Which of `candidates` (items with their tokens) signed this request;
    /// an expired signature is refused whoever made it.
    pub fn signer<'a, T>(
        &self,
        candidates: impl IntoIterator<Item = (&'a str, T)>,
    ) -> Result<T, Refused> {
        if let Some(expiration) = self.expiration {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if expiration < now {
                return Err(Refused::Expired);
            }
        }
        candidates
            .into_iter()
            .find(|(token, _)| {
                let made = self.made_with(token);
                // The signature is a secret.
                super::guard::same_secret(made.as_bytes(), self.signature.as_bytes())
            })
            .map(|(_, item)| item)
            .ok_or(Refused::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_names_the_sandbox_whose_token_made_it() {
        // Made by E2B's Python SDK (e2b/sandbox/signature.py) for these values.
        let query = "path=notes%2Fa.txt&username=user&signature=v1_i3pd/GTOA69p/F6MYNj%2B/dUyVDOvb1zI5LntuF8%2BbMg";
        let url = SignedFileUrl::parse("GET", "/files", Some(query)).unwrap();
        assert_eq!(url.operation, "read");
        let sandboxes = [("other-token", 1), ("secret-token", 2)];
        assert_eq!(url.signer(sandboxes), Ok(2));
        assert_eq!(url.signer([("other-token", 1)]), Err(Refused::NoMatch));
        // The same signature does not upload.
        let upload = SignedFileUrl::parse("POST", "/files", Some(query)).unwrap();
        assert_eq!(upload.signer(sandboxes), Err(Refused::NoMatch));
    }

    #[test]
    fn expired_signatures_and_unsigned_urls() {
        let expired = SignedFileUrl::parse(
            "GET",
            "/files",
            Some("path=a&signature=v1_x&signature_expiration=1000"),
        )
        .unwrap();
        assert_eq!(expired.signer([("t", ())]), Err(Refused::Expired));
        assert_eq!(SignedFileUrl::parse("GET", "/files", Some("path=a")), None);
        assert_eq!(
            SignedFileUrl::parse("GET", "/health", Some("signature=v1_x")),
            None
        );
        assert_eq!(
            SignedFileUrl::parse(
                "GET",
                "/files",
                Some("signature=v1_x&signature_expiration=soon")
            ),
            None
        );
    }
}
