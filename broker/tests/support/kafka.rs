//! The Kafka front end spoken byte by byte: one connection, frame by frame.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// One Kafka connection, spoken to frame by frame.
pub struct Raw {
    pub stream: TcpStream,
    pub next_correlation: i32,
}

impl Raw {
    pub fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            stream,
            next_correlation: 1,
        }
    }

    pub fn send_frame(&mut self, body: &[u8]) {
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.put_slice(body);
        self.stream.write_all(&frame).unwrap();
    }

    /// Reads one response frame; `None` if the broker closed the
    /// connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return None;
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).ok()?;
        Some(Bytes::from(buf))
    }

    pub fn encode<R: Request>(&mut self, version: i16, req: &R) -> (i32, BytesMut) {
        let correlation_id = self.next_correlation;
        self.next_correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str("raw-test"));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, R::header_version(version)).unwrap();
        req.encode(&mut buf, version).unwrap();
        (correlation_id, buf)
    }

    /// Sends `req` and decodes its response.
    pub fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let (correlation_id, buf) = self.encode(version, req);
        self.send_frame(&buf);
        let mut frame = self.read_frame().expect("a response");
        let header =
            ResponseHeader::decode(&mut frame, R::Response::header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation_id);
        R::Response::decode(&mut frame, version).unwrap()
    }

    pub fn closed(&mut self) -> bool {
        self.read_frame().is_none()
    }
}

/// Authenticates `c` with SASL PLAIN as `user`; the response's error code.
pub fn sasl_plain(c: &mut Raw, user: &str, password: &str) -> i16 {
    let mut hs = SaslHandshakeRequest::default();
    hs.mechanism = StrBytes::from_static_str("PLAIN");
    assert_eq!(c.call(1, &hs).error_code, 0);
    let mut auth = SaslAuthenticateRequest::default();
    auth.auth_bytes = Bytes::from(format!("\0{user}\0{password}"));
    c.call(2, &auth).error_code
}
