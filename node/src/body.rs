//! Request and response bodies, and the hook that closes a request's books when its body is
//! done.
//!
//! A response body may stream from the backend long after the pipeline returned, so the access
//! log line and the metrics happen when the body is finished or dropped (a client that goes
//! away mid-body still gets logged). The backend connection goes back to its pool on its own,
//! as soon as the backend's body has been read ([`BackendBody`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::{AccessLog, AccessRecord};
use crate::fields::Fields;
use crate::metrics::StageMetrics;
use crate::server::ConnState;
use crate::upstream::{BackendBody, BackendBodyError};

/// The body the request body becomes on its way to a backend.
pub type UpstreamBody = http_body_util::Limited<RequestBody>;

/// A client's request body: read by the edge's own HTTP/1.1 server, or by hyper's HTTP/2 one.
pub enum RequestBody {
    Http1(crate::server::http1::RequestBody),
    Http2(Incoming),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Http1(b) => b.is_end_stream(),
            RequestBody::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Http1(b) => b.size_hint(),
            RequestBody::Http2(b) => b.size_hint(),
        }
    }
}

pub struct ResponseBody {
    kind: Kind,
    finish: Option<Box<Finish>>,
}

enum Kind {
    Full(Option<Bytes>),
    Backend(BackendBody),
}

/// Everything to do once the response is over.
pub struct Finish {
    pub record: AccessRecord,
    pub started: Instant,
    pub bytes: u64,
    pub metrics: Arc<StageMetrics>,
    pub access_log: AccessLog,
    pub connection: Arc<ConnState>,
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        let bytes = bytes.into();
        ResponseBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            finish: None,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    pub fn backend(body: BackendBody) -> ResponseBody {
        ResponseBody {
            kind: Kind::Backend(body),
            finish: None,
        }
    }

    pub fn set_finish(&mut self, finish: Box<Finish>) {
        self.finish = Some(finish);
    }

    /// The request id the response answers, once the pipeline has set the books
    /// ([`ResponseBody::set_finish`]); the protocol layer sends it as `x-request-id`, in place
    /// of any the response's own fields carry.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.finish.as_ref().map(|f| &f.record.request_id)
    }

    /// A proxied response's fields as the backend sent them, when they are not in the
    /// response's header map ([`BackendBody::fields`]).
    pub fn backend_fields(&self) -> Option<&Fields> {
        match &self.kind {
            Kind::Backend(body) => body.fields(),
            Kind::Full(_) => None,
        }
    }

    /// Moves a proxied response's fields into `headers` (HTTP/2 needs a header map).
    pub fn move_fields_into(&mut self, headers: &mut http::HeaderMap) {
        if let Kind::Backend(body) = &mut self.kind {
            body.move_fields_into(headers);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BackendBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Backend(body) => Pin::new(body).poll_frame(cx),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(f)) = (&polled, this.finish.as_mut())
            && let Some(d) = frame.data_ref()
        {
            f.bytes += d.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Backend(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Backend(body) => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let Some(f) = self.finish.take() else { return };
        let latency = f.started.elapsed();
        f.metrics
            .observe(f.record.status, latency, f.record.integration_latency);
        f.access_log.record(&f.record, f.bytes, latency);
        f.connection.in_flight.fetch_sub(1, Relaxed);
        f.connection.touch();
    }
}
