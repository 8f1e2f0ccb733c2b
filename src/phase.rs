//! The HTTP phases a script can act in, and what each one lets a script touch.

use std::fmt;

/// A phase of one HTTP stream. A callout callback runs in the phase that dispatched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    RequestHeaders,
    /// The whole request body, buffered.
    RequestBody,
    /// One piece of a streamed request body.
    RequestChunk,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseChunk,
    ResponseTrailers,
    /// After the response went out, for access-log-style work.
    Log,
}

impl Phase {
    /// Every phase, in stream order.
    pub const ALL: [Phase; 9] = [
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::RequestChunk,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
        Phase::ResponseBody,
        Phase::ResponseChunk,
        Phase::ResponseTrailers,
        Phase::Log,
    ];

    /// The script function that handles this phase.
    pub const fn function_name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "on_request_headers",
            Phase::RequestBody => "on_request_body",
            Phase::RequestChunk => "on_request_chunk",
            Phase::RequestTrailers => "on_request_trailers",
            Phase::ResponseHeaders => "on_response_headers",
            Phase::ResponseBody => "on_response_body",
            Phase::ResponseChunk => "on_response_chunk",
            Phase::ResponseTrailers => "on_response_trailers",
            Phase::Log => "on_log",
        }
    }

    /// What the phase function is for, in a sentence or two (the playground's help).
    pub const fn summary(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "Called with the request headers, before anything goes to the upstream: read and change them, answer locally, or make callouts.",
            Phase::RequestBody => "Called once with the whole request body, buffered (up to `limits.max_body_size`).",
            Phase::RequestChunk => "Called with each piece of the request body as it passes (`last` is true for the final call): the body is streamed, not buffered.",
            Phase::RequestTrailers => "Called with the request trailers, when the request has some.",
            Phase::ResponseHeaders => "Called with the upstream's response headers, before they go to the client.",
            Phase::ResponseBody => "Called once with the whole response body, buffered (up to `limits.max_body_size`).",
            Phase::ResponseChunk => "Called with each piece of the response body as it passes (`last` is true for the final call): the body is streamed, not buffered.",
            Phase::ResponseTrailers => "Called with the response trailers, when the response has some.",
            Phase::Log => "Called after the response went out, for access-log-style work: both header maps can be read again.",
        }
    }

    /// Whether this phase belongs to the request (decoding) side.
    pub const fn is_request(self) -> bool {
        matches!(
            self,
            Phase::RequestHeaders
                | Phase::RequestBody
                | Phase::RequestChunk
                | Phase::RequestTrailers
        )
    }

    /// Whether this phase's function takes the chunk and `last` (the others take nothing).
    pub const fn is_chunk(self) -> bool {
        matches!(self, Phase::RequestChunk | Phase::ResponseChunk)
    }

    const fn bit(self) -> u16 {
        1 << self as u8
    }

    /// The phase whose headers this body phase may use while the proxy holds them for it.
    const fn held_headers(self) -> Option<Phase> {
        match self {
            Phase::RequestBody => Some(Phase::RequestHeaders),
            Phase::ResponseBody => Some(Phase::ResponseHeaders),
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.function_name())
    }
}

/// A set of phases: where a binding is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases(u16, Held);

/// Whether a [`Phases`] adds the body phase of its header phases when the proxy holds the
/// headers for it ([`Phases::or_held`]). Apart from the phases' bits: a set of one phase tests
/// as `phase == that one`, which a second bit would spoil on every binding call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Held(bool);

impl Phases {
    pub const ALL: Phases = Phases(0b1_1111_1111, Held(false));
    pub const REQUEST_HEADERS: Phases = Phases::of(&[Phase::RequestHeaders]);
    /// Where a script reads and writes the request body: all of it, or the current chunk.
    pub const REQUEST_BODY: Phases = Phases::of(&[Phase::RequestBody, Phase::RequestChunk]);
    pub const REQUEST_TRAILERS: Phases = Phases::of(&[Phase::RequestTrailers]);
    pub const RESPONSE_HEADERS: Phases = Phases::of(&[Phase::ResponseHeaders]);
    pub const RESPONSE_BODY: Phases = Phases::of(&[Phase::ResponseBody, Phase::ResponseChunk]);
    pub const CHUNKS: Phases = Phases::of(&[Phase::RequestChunk, Phase::ResponseChunk]);
    pub const RESPONSE_TRAILERS: Phases = Phases::of(&[Phase::ResponseTrailers]);
    /// Where the stream can still be paused, answered or sent a callout.
    pub const STREAMING: Phases = Phases(Phases::ALL.0 & !Phase::Log.bit(), Held(false));
    /// Until the response headers went out: where a local response is still possible.
    pub const BEFORE_RESPONSE_BODY: Phases = Phases::of(&[
        Phase::RequestHeaders,
        Phase::RequestBody,
        Phase::RequestChunk,
        Phase::RequestTrailers,
        Phase::ResponseHeaders,
    ]);

    pub const fn of(phases: &[Phase]) -> Phases {
        let mut bits = 0;
        let mut i = 0;
        while i < phases.len() {
            bits |= phases[i].bit();
            i += 1;
        }
        Phases(bits, Held(false))
    }

    pub const fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }

    /// The phases of both sets (held if either is).
    pub const fn union(self, other: Phases) -> Phases {
        Phases(self.0 | other.0, Held(self.1 .0 || other.1 .0))
    }

    pub const fn intersects(self, other: Phases) -> bool {
        self.0 & other.0 != 0
    }

    /// The same set, and also the body phase (`on_request_body`, `on_response_body`) of each
    /// header phase in it when the plugin runs with `allow_on_headers_stop_iteration`: the
    /// proxy then holds a buffered message's headers until its body phase has run.
    pub const fn or_held(self) -> Phases {
        Phases(self.0, Held(true))
    }

    /// Whether `phase` is a body phase this set adds when the proxy holds the headers (see
    /// [`Phases::or_held`]); [`Phases::contains`] doesn't count it.
    pub const fn held_in(self, phase: Phase) -> bool {
        match phase.held_headers() {
            Some(headers) => self.1 .0 && self.contains(headers),
            None => false,
        }
    }

    /// The phases in the set, in stream order.
    pub fn iter(self) -> impl Iterator<Item = Phase> {
        Phase::ALL.into_iter().filter(move |p| self.contains(*p))
    }

    /// The body phases the set adds when the proxy holds the headers ([`Phases::or_held`]).
    pub fn iter_held(self) -> impl Iterator<Item = Phase> {
        Phase::ALL.into_iter().filter(move |p| self.held_in(*p))
    }
}

impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Phases::ALL {
            return f.write_str("every phase");
        }
        let names: Vec<&str> = self.iter().map(Phase::function_name).collect();
        f.write_str(&names.join(", "))
    }
}
