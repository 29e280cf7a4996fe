//! One HTTP/1 request passed on over a connection of its own and its answer
//! brought back, upgrades (WebSocket and the like) included, both ways: for
//! the servers in sandboxes (`serve`) and the egress proxy of sandboxes
//! with network (`namespace::egress`).

use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, HeaderMap};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Sends `request` over `stream` (a fresh connection to the server) and
/// returns the server's answer; an upgrade the server agrees to is joined
/// to the client's on a task of its own.
pub async fn relay<S, B>(
    stream: S,
    mut request: Request<B>,
) -> Result<Response<Incoming>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("a relayed connection ended: {e}");
        }
    });
    let upgrade = wants_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    let mut response = sender.send_request(request).await?;
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (response.status(), upgrade) {
        let server = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = tokio::join!(client, server) else {
                return;
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
    Ok(response)
}

/// Whether a request asks to switch protocols (`Connection: upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}
