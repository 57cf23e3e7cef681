//! Guest stdout/stderr: each line a component writes becomes one host log event tagged
//! with the component and the request it was handling, instead of interleaving raw
//! bytes from concurrent instances on the host's own streams.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept before it is logged in pieces (a guest writing without newlines
/// must not grow host memory without bound).
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Tags shared by every stream of one instance; the request id is filled in when the
/// instance's request starts.
#[derive(Clone)]
pub struct OutputTags {
    pub component: Arc<str>,
    pub request_id: Arc<OnceLock<String>>,
    pub trace: crate::telemetry::TraceCell,
}

/// A guest output stream (`StdoutStream` for both WASI generations).
pub struct GuestOutput {
    tags: OutputTags,
    stream: Stream,
}

impl GuestOutput {
    pub fn new(tags: OutputTags, stream: Stream) -> Self {
        Self { tags, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(self.tags.clone(), self.stream))
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(self.tags.clone(), self.stream))
    }
}

/// Splits written bytes into lines and logs each one.
struct LineLogger {
    tags: OutputTags,
    stream: Stream,
    pending: Vec<u8>,
}

impl LineLogger {
    fn new(tags: OutputTags, stream: Stream) -> Self {
        Self {
            tags,
            stream,
            pending: Vec::new(),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.pending.len() > MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return;
        }
        let component = &*self.tags.component;
        let request_id = self.tags.request_id.get().map(String::as_str).unwrap_or("");
        let (trace_id, span_id) = match self.tags.trace.get() {
            Some(trace) => (trace.trace_id_hex(), trace.span_id_hex()),
            None => (String::new(), String::new()),
        };
        match self.stream {
            Stream::Stdout => {
                tracing::info!(target: "guest", component, request_id, trace_id, span_id, stream = "stdout", "{line}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "guest", component, request_id, trace_id, span_id, stream = "stderr", "{line}")
            }
        }
    }

    fn finish(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.finish();
    }
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineLogger {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}
