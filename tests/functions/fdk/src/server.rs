//! The HTTP/1.1 side of the contract: accept connections on the published socket, keep them alive,
//! route only `POST /call`, bound the handler by `Fn-Deadline` (504 when it passes) and encode the
//! handler's answer for the runner.

use crate::{
    FdkError, ListenerConfig, Request, Response, ResponseBody, empty_body,
    headers::{encode_response_headers, handler_view, http_context, parse_rfc3339},
    listener,
};
use http::{Method, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, future::Future, sync::Arc, time::SystemTime};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};

/// Asks the server to stop accepting connections; [`Server::serve`] then returns.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Shutdown {
    /// Stops the accept loop. Connections already being served are not waited for: whether a reply
    /// still goes out depends on how long the process lives on (as with fn-test-utils).
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// A bound FDK server.
pub struct Server {
    config: ListenerConfig,
    listener: UnixListener,
    shutdown: Shutdown,
}

impl Server {
    /// Binds and publishes the socket (§3.2). Needs a Tokio runtime.
    pub fn bind(config: ListenerConfig) -> Result<Self, FdkError> {
        let listener = listener::bind(&config)?;
        Ok(Server {
            config,
            listener,
            shutdown: Shutdown(Arc::new(watch::channel(false).0)),
        })
    }

    /// A handle that stops [`Server::serve`].
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves calls until shut down (by [`Shutdown::trigger`] or SIGTERM), then removes the socket
    /// files.
    pub async fn serve<H, F>(self, handler: H) -> Result<(), FdkError>
    where
        H: Fn(Request) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let mut stop = self.shutdown.0.subscribe();
        // As PID 1 (no docker-init) SIGTERM would be ignored; handle it so `docker stop` is quick.
        let mut sigterm = signal(SignalKind::terminate())
            .map_err(|e| crate::log_err(format_args!("fdk: cannot watch SIGTERM: {e}")))
            .ok();
        let result = loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break Ok(()),
                Some(()) = async { sigterm.as_mut()?.recv().await } => break Ok(()),
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(source) => {
                    break Err(FdkError::Accept {
                        path: self.config.socket_path.clone(),
                        source,
                    });
                }
            };
            let handler = handler.clone();
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    let shutdown = shutdown.clone();
                    async move { Ok::<_, Infallible>(dispatch(handler, shutdown, req).await) }
                });
                // Keep-alive on, and no read timeout: the runner may hold an idle connection open
                // for as long as it likes between calls.
                let result = http1::Builder::new()
                    .keep_alive(true)
                    .header_read_timeout(None)
                    .title_case_headers(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = result {
                    crate::log_err(format_args!("fdk: connection error: {e}"));
                }
            });
        };
        listener::unpublish(&self.config);
        result
    }
}

fn status_only(status: StatusCode) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(empty_body());
    *response.status_mut() = status;
    response
}

async fn dispatch<H, F>(
    handler: H,
    shutdown: Shutdown,
    req: http::Request<Incoming>,
) -> http::Response<ResponseBody>
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    if req.method() != Method::POST || req.uri().path() != "/call" {
        return status_only(StatusCode::NOT_FOUND);
    }
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let call_id = headers
        .get("fn-call-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let deadline = headers
        .get("fn-deadline")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_rfc3339);
    let http = http_context(&headers);
    let view = if http.is_some() {
        handler_view(&headers)
    } else {
        headers
    };
    let is_http = http.is_some();
    let call = handler(Request {
        call_id,
        deadline,
        headers: view,
        http,
        body,
        shutdown,
    });
    let response = match deadline {
        Some(deadline) => {
            let left = deadline.duration_since(SystemTime::now()).unwrap_or_default();
            match tokio::time::timeout(left, call).await {
                Ok(response) => response,
                Err(_) => return status_only(StatusCode::GATEWAY_TIMEOUT),
            }
        }
        None => call.await,
    };
    let Response {
        status,
        headers,
        body,
        raw_status,
    } = response;
    let mut out = http::Response::new(body);
    *out.status_mut() = raw_status.unwrap_or(StatusCode::OK);
    *out.headers_mut() = encode_response_headers(headers, status, is_http);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{full_body, read_body};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::time::Duration;
    use tokio::net::UnixStream;

    async fn echo(req: Request) -> Response {
        let mut response = Response::new(full_body(format!(
            "{}|{}",
            req.call_id.clone().unwrap_or_default(),
            String::from_utf8_lossy(&read_body(req.body).await.unwrap())
        )));
        response.status = StatusCode::CREATED;
        response.headers.insert("x-out", "1".parse().unwrap());
        if req.headers.contains_key("x-slow") {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        response
    }

    fn deadline_in(secs: u64) -> String {
        time::OffsetDateTime::from(SystemTime::now() + Duration::from_secs(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    #[tokio::test]
    async fn serves_calls_with_keep_alive_intent_and_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let config = ListenerConfig {
            socket_path: dir.path().join("lsnr.sock"),
        };
        let server = Server::bind(config.clone()).unwrap();
        let shutdown = server.shutdown_handle();
        let serving = tokio::spawn(server.serve(echo));

        let stream = UnixStream::connect(&config.socket_path).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = |path: &str, extra: &[(&str, &str)], deadline: String| {
            let mut builder = http::Request::post(path)
                .header("host", "localhost")
                .header("fn-call-id", "call-1")
                .header("fn-deadline", deadline);
            for (k, v) in extra {
                builder = builder.header(*k, *v);
            }
            builder.body(Full::new(Bytes::from_static(b"hi"))).unwrap()
        };

        // Plain invoke: user status dropped, headers unprefixed.
        let response = sender
            .send_request(request("/call", &[], deadline_in(30)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-out"], "1");
        assert!(response.headers().get("fn-http-status").is_none());
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "call-1|hi"
        );

        // Same connection, HTTP-trigger intent: prefixed headers and Fn-Http-Status.
        let response = sender
            .send_request(request(
                "/call",
                &[("fn-intent", "httprequest"), ("fn-http-method", "GET")],
                deadline_in(30),
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["fn-http-h-x-out"], "1");
        assert_eq!(response.headers()["fn-http-status"], "201");
        response.into_body().collect().await.unwrap();

        // Wrong route.
        let response = sender
            .send_request(request("/other", &[], deadline_in(30)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        response.into_body().collect().await.unwrap();

        // Deadline passes inside the handler: 504.
        let response = sender
            .send_request(request("/call", &[("x-slow", "1")], deadline_in(1)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

        shutdown.trigger();
        serving.await.unwrap().unwrap();
        assert!(std::fs::symlink_metadata(&config.socket_path).is_err());
    }
}
