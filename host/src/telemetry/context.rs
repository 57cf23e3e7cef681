//! W3C Trace Context (`traceparent`, `tracestate`): parsing what arrives, making the
//! ids of new traces and spans, and writing them on what leaves.

use std::cell::Cell;
use std::sync::Arc;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Where one span sits in its trace, and the vendor state that travels with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// `tracestate`, passed on unchanged (its entries belong to other vendors).
    pub state: Option<Arc<str>>,
}

fn hex_to<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let seed = uuid::Uuid::new_v4().as_u64_pair();
        (seed.0 ^ seed.1) | 1
    });
}

/// Random bits for ids: SplitMix64 per thread, seeded from the OS once (ids need to be
/// unique, not secret).
fn random_u64() -> u64 {
    RNG.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = random_u64().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

impl TraceContext {
    /// A `traceparent` as the W3C spec reads it: version 00 exactly, or a later version
    /// read by its first four fields; ids must not be all zeros; hex in lower case.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent.trim();
        let mut fields = traceparent.split('-');
        let (version, trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let version = hex_to::<1>(version)?[0];
        if version == 0xff || (version == 0 && (fields.next().is_some() || traceparent.len() != 55)) {
            return None;
        }
        let trace_id = hex_to::<16>(trace)?;
        let span_id = hex_to::<8>(span)?;
        let flags = hex_to::<1>(flags)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .map(Arc::from);
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state,
        })
    }

    /// The first span of a new trace.
    pub fn root() -> Self {
        let mut trace_id = [0u8; 16];
        loop {
            trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
            trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
            if trace_id != [0; 16] {
                break;
            }
        }
        Self {
            trace_id,
            span_id: new_span_id(),
            sampled: true,
            state: None,
        }
    }

    /// A new span under this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// The headers that carry this context: `traceparent`, and `tracestate` when set.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        std::iter::once((TRACEPARENT, self.traceparent()))
            .chain(self.state.as_deref().map(|state| (TRACESTATE, state.to_string())))
    }

    pub fn traceparent(&self) -> String {
        let mut header = String::with_capacity(55);
        header.push_str("00-");
        header.push_str(&self.trace_id_hex());
        header.push('-');
        header.push_str(&self.span_id_hex());
        header.push_str(if self.sampled { "-01" } else { "-00" });
        header
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_and_writes_back_the_same() {
        let context = TraceContext::parse(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert_eq!(context.state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(context.traceparent(), EXAMPLE);
        let unsampled = TraceContext::parse(&EXAMPLE.replace("-01", "-00"), None).unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may add fields after the four it shares with 00.
        assert!(TraceContext::parse(&format!("01{}-more", &EXAMPLE[2..]), None).is_some());
    }

    #[test]
    fn children_share_the_trace_and_get_their_own_span() {
        let root = TraceContext::root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_ne!(TraceContext::root().trace_id, root.trace_id);
        assert_eq!(TraceContext::parse(&child.traceparent(), None), Some(child));
    }
}
