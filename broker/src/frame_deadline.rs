//! The gRPC listener's header timeout. A byte stream of HTTP/2 shows no
//! request boundaries, but it shows frames: the 24-byte client preface,
//! then frames of a 9-byte header (whose first three bytes are the
//! payload's length) and a payload. Once the first byte of the preface or
//! of a frame has arrived, the rest of it must follow within
//! `request_header_timeout_ms`, or the connection is closed: a slowloris
//! that trickles a request holds its connection that long at most, while
//! a connection idle between frames may stay (HTTP/2 keepalive and the
//! connection limit bound those). The Kafka listener applies the same
//! rule to its request frames.
//!
//! The framing is only followed, never buffered or allocated: a frame
//! over the advertised maximum is refused by the HTTP/2 codec itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

/// Length of the HTTP/2 client connection preface.
pub const PREFACE_LEN: usize = 24;
/// Length of an HTTP/2 frame header.
pub const FRAME_HEADER_LEN: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// The client preface, with this many bytes still due.
    Preface(usize),
    /// A frame header, with this many of its bytes in.
    Header(usize),
    /// A frame payload, with this many bytes still due.
    Payload(usize),
}

/// Where a connection's inbound bytes are in HTTP/2's framing.
#[derive(Debug, Clone)]
pub struct Framing {
    unit: Unit,
    header: [u8; FRAME_HEADER_LEN],
}

/// What [`Framing::feed`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// A unit (the preface or a frame) is partly in.
    pub mid_unit: bool,
    /// The partly-in unit began within these bytes.
    pub began: bool,
}

impl Default for Framing {
    fn default() -> Framing {
        Framing {
            unit: Unit::Preface(PREFACE_LEN),
            header: [0; FRAME_HEADER_LEN],
        }
    }
}

impl Framing {
    /// Follows `bytes`, the next ones read from the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Fed {
        let was_mid = self.mid_unit();
        let mut completed = false;
        while !bytes.is_empty() {
            match self.unit {
                // The preface and a payload are only counted off.
                unit @ (Unit::Preface(due) | Unit::Payload(due)) => {
                    let n = due.min(bytes.len());
                    bytes = &bytes[n..];
                    self.unit = match unit {
                        _ if n == due => {
                            completed = true;
                            Unit::Header(0)
                        }
                        Unit::Preface(_) => Unit::Preface(due - n),
                        _ => Unit::Payload(due - n),
                    };
                }
                Unit::Header(have) => {
                    let n = (FRAME_HEADER_LEN - have).min(bytes.len());
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.unit = if have + n < FRAME_HEADER_LEN {
                        Unit::Header(have + n)
                    } else {
                        let h = &self.header;
                        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                        if len == 0 {
                            completed = true;
                            Unit::Header(0)
                        } else {
                            Unit::Payload(len)
                        }
                    };
                }
            }
        }
        let mid_unit = self.mid_unit();
        Fed {
            mid_unit,
            began: mid_unit && (completed || !was_mid),
        }
    }

    fn mid_unit(&self) -> bool {
        match self.unit {
            Unit::Preface(due) => due < PREFACE_LEN,
            Unit::Header(have) => have > 0,
            Unit::Payload(_) => true,
        }
    }
}

/// Reads through `inner`, failing with `TimedOut` once a unit has been
/// partly in for longer than the timeout.
pub struct Deadline<S> {
    inner: S,
    framing: Framing,
    timeout: Duration,
    armed: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Deadline<S> {
        Deadline {
            inner,
            framing: Framing::default(),
            timeout,
            armed: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(sleep) = this.armed.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            metrics::counter!("ferry_grpc_closed_total", "reason" => "header_timeout").increment(1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "an HTTP/2 frame took longer than request_header_timeout_ms ({} ms) to arrive",
                    this.timeout.as_millis()
                ),
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                let fed = this.framing.feed(fresh);
                if !fed.mid_unit {
                    this.armed = None;
                } else if fed.began || this.armed.is_none() {
                    let until = tokio::time::Instant::now() + this.timeout;
                    match this.armed.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(until),
                        None => this.armed = Some(Box::pin(tokio::time::sleep_until(until))),
                    }
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            4,
            0,
            0,
            0,
            0,
            0,
        ];
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    #[test]
    fn the_preface_and_frames_are_followed_to_their_boundaries() {
        let mut f = Framing::default();
        assert_eq!(
            f.feed(&[0; 10]),
            Fed {
                mid_unit: true,
                began: true
            }
        );
        assert_eq!(
            f.feed(&[0; 14]),
            Fed {
                mid_unit: false,
                began: false
            }
        );
        let two = [frame(6), frame(0), frame(3)].concat();
        // Split inside the last frame: the unit partly in began in this
        // chunk.
        let fed = f.feed(&two[..two.len() - 1]);
        assert_eq!(
            fed,
            Fed {
                mid_unit: true,
                began: true
            }
        );
        assert_eq!(
            f.feed(&two[two.len() - 1..]),
            Fed {
                mid_unit: false,
                began: false
            }
        );
        // A trickled header: still the same unit, not a new one.
        let h = frame(100);
        assert!(f.feed(&h[..1]).began);
        assert_eq!(
            f.feed(&h[1..5]),
            Fed {
                mid_unit: true,
                began: false
            }
        );
    }

    proptest! {
        /// However the stream is cut, the framing ends at the boundary
        /// after the last whole frame, and is mid-unit exactly when bytes
        /// of a frame are still due.
        #[test]
        fn any_split_of_a_frame_stream_is_followed(
            lens in proptest::collection::vec(0usize..300, 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..200),
            keep in 0usize..18,
        ) {
            let mut stream = vec![0u8; PREFACE_LEN];
            for l in &lens {
                stream.extend(frame(*l));
            }
            // Then `keep` bytes of a 9-byte frame (0: none of it).
            stream.extend(&frame(9)[..keep]);
            let mut f = Framing::default();
            let mut rest = &stream[..];
            let mut last = None;
            for c in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*c).min(rest.len());
                last = Some(f.feed(&rest[..n]));
                rest = &rest[n..];
            }
            prop_assert_eq!(last.is_some_and(|l| l.mid_unit), keep > 0);
        }
    }

    #[tokio::test]
    async fn a_frame_left_unfinished_times_out_and_an_idle_connection_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Deadline::new(server, Duration::from_millis(300));
        let mut buf = [0u8; 256];
        // The whole preface and an empty frame: at a boundary, so the
        // connection may idle well past the timeout.
        client.write_all(&[0; PREFACE_LEN]).await.unwrap();
        client.write_all(&frame(0)).await.unwrap();
        let mut got = 0;
        while got < PREFACE_LEN + FRAME_HEADER_LEN {
            got += conn.read(&mut buf).await.unwrap();
        }
        let idle = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection is not closed");
        // Half a frame header, then nothing: closed after the timeout.
        client.write_all(&frame(10)[..4]).await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 4);
        let started = tokio::time::Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
