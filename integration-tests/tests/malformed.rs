//! Thousands of malformed inputs against a running `relay-server` process (issue 10): tokens
//! and `sb-hc-*` parameters, request targets with bad percent-encoding and non-ASCII bytes,
//! request heads with thousands of headers, huge values or `Transfer-Encoding` with
//! `Content-Length`, control-channel JSON that is garbage, oversize, deeply nested or
//! unknown, and frames with reserved opcodes, no mask, fragmented control frames, 2^63
//! lengths and invalid UTF-8, on control channels and on tunnels.
//!
//! Every answer must be a 4xx status, or the documented close code (README, "What the relay
//! does"): 1002 protocol error, 1007 text that is not UTF-8, 1008 invalid renewal, 1009
//! oversize; unknown commands and stray binary messages are ignored and the channel stays.
//! Afterwards: no `panicked` in the relay's log, its memory bounded, and a normal tunnel
//! through the relay, HCM and shim still works. The inputs come from a seeded generator, so
//! a failure names a case that can be run again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use hc_emulator::chain::{Chain, ChainBuilder};
use hc_emulator::servers;
use hc_protocol::frame::{self, CloseFrame, OpCode};
use hc_protocol::{AuthRule, AuthScope, Right, Rights, SasKey, SasToken};
use integration_tests::raw::{self, RawClient};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What a case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An HTTP status from 400 to 499.
    ClientError,
    /// A Close frame with one of these codes (after the handshake succeeded).
    Close(&'static [u16]),
    /// Nothing: the channel stays open and still answers a ping.
    Alive,
    /// The connection closed without an answer: only for an HTTP/2 connection preface, which
    /// an HTTP/1.1 server cannot answer in the client's protocol (documented in the README).
    ClosedSilently,
}

/// One malformed input.
struct Case {
    /// Category, for the summary.
    kind: &'static str,
    /// What it is, for failure messages.
    what: String,
    input: Input,
    expect: Expect,
}

enum Input {
    /// Raw bytes on a new connection; the answer is an HTTP response head.
    Http(Vec<u8>),
    /// A valid listener handshake, then these raw bytes on the control channel.
    Control(Vec<u8>),
    /// A valid sender/listener tunnel, then these raw bytes from the sender.
    Tunnel(Vec<u8>),
}

/// What happened.
#[derive(Debug)]
enum Outcome {
    Status(u16),
    Close(Option<u16>),
    Alive,
    Dropped(#[allow(dead_code)] String),
}

struct Relay {
    port: u16,
    /// `(hybrid connection, rule)` -> primary key.
    keys: BTreeMap<(String, String), SasKey>,
}

impl Relay {
    fn token(&self, path: &str, rule: &str, se: u64) -> String {
        let key = &self.keys[&(path.to_owned(), rule.to_owned())];
        SasToken::create(&format!("http://localhost/{path}/"), rule, key, se).expose()
    }

    /// Whether `token` passes every check the relay makes for `sample`.
    fn verifies(&self, token: &str, now: u64) -> bool {
        let rules: Vec<AuthRule> = ["defaultListener", "defaultSender"]
            .iter()
            .map(|rule| AuthRule {
                name: (*rule).into(),
                primary_key: self.keys[&("sample".to_owned(), (*rule).to_owned())].clone(),
                secondary_key: SasKey::new("unused secondary key").unwrap(),
                rights: Rights::of(&[if *rule == "defaultListener" {
                    Right::Listen
                } else {
                    Right::Send
                }]),
            })
            .collect();
        let hosts = vec!["localhost".to_owned()];
        let scope = AuthScope {
            namespace_hosts: &hosts,
            resource_path: "sample",
            entity_rules: &rules,
            namespace_rules: &[],
        };
        [Right::Listen, Right::Send]
            .iter()
            .any(|r| hc_protocol::auth::authorize(token, &scope, *r, now).is_ok())
    }

    async fn tcp(&self) -> TcpStream {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp
    }
}

fn upgrade(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// A masked frame as a client sends it, with any header bits.
fn frame_bytes(b0: u8, masked: bool, len_field: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let len = len_field.unwrap_or(payload.len() as u64);
    let mask_bit = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as u64 {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    let mut body = payload.to_vec();
    if masked {
        let mask = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&mask);
        frame::apply_mask(&mut body, mask, 0);
    }
    out.extend_from_slice(&body);
    out
}

fn text_frame(payload: &[u8]) -> Vec<u8> {
    frame_bytes(0x81, true, None, payload)
}

/// Mutations of a valid token, as a careless or hostile client sends them.
fn mutate_token(rng: &mut StdRng, valid: &str) -> String {
    let fields = ["sr", "sig", "se", "skn"];
    let field = fields[rng.random_range(0..fields.len())];
    let junk = |rng: &mut StdRng| -> String {
        match rng.random_range(0..8) {
            0 => String::new(),
            1 => "%zz%".into(),
            2 => "\u{e9}\u{20ac}\u{1F600}".into(),
            3 => "A".repeat(rng.random_range(300..9000)),
            4 => "-1".into(),
            5 => "18446744073709551616".into(),
            6 => (0..rng.random_range(1..40))
                .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
                .collect(),
            _ => "1e10".into(),
        }
    };
    match rng.random_range(0..9) {
        0 => valid[..rng.random_range(0..valid.len())].to_owned(),
        1 => {
            let mut b = valid.as_bytes().to_vec();
            let i = rng.random_range(0..b.len());
            let old = b[i];
            while b[i] == old {
                b[i] = rng.random_range(0x21u8..0x7f);
            }
            String::from_utf8_lossy(&b).into_owned()
        }
        2 => replace_field(valid, field, &junk(rng)),
        3 => remove_field(valid, field),
        4 => format!("{valid}&{field}={}", junk(rng)),
        5 => valid.replacen(
            "SharedAccessSignature ",
            ["SharedAccessSignature", "Bearer ", "", "SAS "][rng.random_range(0..4)],
            1,
        ),
        6 => replace_field(
            valid,
            "se",
            [
                "0",
                "1",
                "99999999999999",
                &u64::MAX.to_string(),
                "\u{967}\u{968}",
            ][rng.random_range(0..5)],
        ),
        7 => replace_field(
            valid,
            "skn",
            ["defaultListener", "RootManageSharedAccessKey", "nope", ""][rng.random_range(0..4)],
        ),
        _ => junk(rng),
    }
}

fn replace_field(token: &str, field: &str, value: &str) -> String {
    let (prefix, pairs) = token.split_once(' ').unwrap_or(("", token));
    let pairs: Vec<String> = pairs
        .split('&')
        .map(|p| {
            if p.split('=').next() == Some(field) {
                format!("{field}={value}")
            } else {
                p.to_owned()
            }
        })
        .collect();
    format!("{prefix} {}", pairs.join("&"))
}

fn remove_field(token: &str, field: &str) -> String {
    let (prefix, pairs) = token.split_once(' ').unwrap_or(("", token));
    let pairs: Vec<&str> = pairs
        .split('&')
        .filter(|p| p.split('=').next() != Some(field))
        .collect();
    format!("{prefix} {}", pairs.join("&"))
}

/// Header values may not hold control characters; percent-encode what a header cannot carry.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32 & 0xff)
            }
        })
        .collect()
}

fn token_cases(relay: &Relay, rng: &mut StdRng, n: usize) -> Vec<Case> {
    let now = relay_server::now_unix();
    let valid_send = relay.token("sample", "defaultSender", now + 3600);
    let valid_listen = relay.token("sample", "defaultListener", now + 3600);
    (0..n)
        .map(|i| {
            let listen = i % 4 == 1;
            // A mutation may leave a valid token (a far `se`, a byte replaced by itself): the
            // relay then rightly serves it, so draw again.
            let token = loop {
                let t = mutate_token(rng, if listen { &valid_listen } else { &valid_send });
                if !relay.verifies(&t, now) {
                    break t;
                }
            };
            let encoded = hc_protocol::uri::query_encode(&token);
            let (what, bytes) = match i % 8 {
                0 | 1 => {
                    let action = if listen { "listen" } else { "connect" };
                    (
                        "upgrade, header",
                        upgrade(
                            &format!("/$hc/sample?sb-hc-action={action}"),
                            &format!("ServiceBusAuthorization: {}\r\n", header_safe(&token)),
                        ),
                    )
                }
                2 => (
                    "upgrade, query",
                    upgrade(&format!("/$hc/sample?sb-hc-token={encoded}"), ""),
                ),
                3 => (
                    "upgrade, Authorization",
                    upgrade(
                        "/$hc/sample",
                        &format!("Authorization: {}\r\n", header_safe(&token)),
                    ),
                ),
                4 => (
                    "http mode, header",
                    get(
                        "/sample/x",
                        &format!("ServiceBusAuthorization: {}\r\n", header_safe(&token)),
                    ),
                ),
                5 => (
                    "http mode, query",
                    get(&format!("/sample/x?sb-hc-token={encoded}"), ""),
                ),
                6 => (
                    "runtime info",
                    get(
                        "/sample?api-version=2016-07",
                        &format!("Authorization: {}\r\n", header_safe(&token)),
                    ),
                ),
                _ => (
                    "http mode, Authorization",
                    get(
                        "/sample/y",
                        &format!("Authorization: {}\r\n", header_safe(&token)),
                    ),
                ),
            };
            Case {
                kind: "tokens",
                what: format!("{what}: {token:.120}"),
                input: Input::Http(bytes),
                expect: Expect::ClientError,
            }
        })
        .collect()
}

fn param_cases(rng: &mut StdRng, n: usize) -> Vec<Case> {
    let values = [
        "",
        "x",
        "%zz",
        "%00",
        "\u{e9}",
        "LISTEN",
        "accept",
        "request",
        "connect ",
        "0",
        "-1",
        "99999999999999999999",
        "%2e%2e",
    ];
    (0..n)
        .map(|i| {
            let v = values[rng.random_range(0..values.len())];
            let id: String = (0..rng.random_range(0..200))
                .map(|_| char::from(rng.random_range(0x21u8..0x7f)))
                .filter(|c| !"#&%+ ".contains(*c))
                .collect();
            let target = match i % 6 {
                0 => format!("/$hc/sample?sb-hc-action={v}x"),
                1 => format!("/$hc/sample?sb-hc-action=accept&sb-hc-id={id}"),
                2 => format!("/$hc/sample?sb-hc-action=accept&sb-hc-id={id}&sb-hc-statusCode={v}&sb-hc-statusDescription={v}"),
                3 => format!("/$hc/sample?sb-hc-action=request&sb-hc-id={id}"),
                4 => format!("/$hc/sample?sb-hc-action=accept&statusCode={v}"),
                _ => format!("/$hc/sample?sb-hc-id={id}{v}&sb-hc-action=connect"),
            };
            Case { kind: "sb-hc parameters", what: target.clone(), input: Input::Http(upgrade(&target, "")), expect: Expect::ClientError }
        })
        .collect()
}

fn target_cases(rng: &mut StdRng, n: usize) -> Vec<Case> {
    let pieces: [&[u8]; 14] = [
        b"%",
        b"%z",
        b"%zz",
        b"%ff",
        b"%00",
        b"\xc3\xa9",
        b"\xe2\x82\xac",
        b"\xff\xfe",
        b"\xc3",
        b"/",
        b"..",
        b"$hc",
        b"sb-hc\xc3\xa9=1",
        b"?",
    ];
    (0..n)
        .map(|i| {
            let mut path = match i % 3 {
                0 => b"/$hc/".to_vec(),
                1 => b"/%24hc/sample".to_vec(),
                _ => b"/sample/".to_vec(),
            };
            for _ in 0..rng.random_range(1..12) {
                path.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
            if i % 50 == 0 {
                path.extend(std::iter::repeat_n(b'a', 20_000));
            }
            let head = if i % 2 == 0 { b"GET ".to_vec() } else { b"POST ".to_vec() };
            let mut bytes = head;
            bytes.extend_from_slice(&path);
            let upgrade_headers = if !path.starts_with(b"/sample/") {
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            } else {
                "Content-Length: 0\r\nConnection: close\r\n"
            };
            bytes.extend_from_slice(format!(" HTTP/1.1\r\nHost: localhost\r\n{upgrade_headers}\r\n").as_bytes());
            Case {
                kind: "request targets",
                what: format!("{:.100}", String::from_utf8_lossy(&path)),
                input: Input::Http(bytes),
                expect: Expect::ClientError,
            }
        })
        .collect()
}

fn head_cases(rng: &mut StdRng, n: usize) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let (what, bytes): (String, Vec<u8>) = match i % 10 {
                0 => {
                    let count = rng.random_range(101..5000);
                    let headers: String = (0..count).map(|j| format!("X-H{j}: v\r\n")).collect();
                    (format!("{count} headers"), get("/sample/x", &headers))
                }
                1 => {
                    let size = rng.random_range(17_000..200_000);
                    (format!("a {size}-byte header value"), get("/sample/x", &format!("X-Big: {}\r\n", "v".repeat(size))))
                }
                2 => (
                    "Transfer-Encoding with Content-Length".into(),
                    b"POST /sample/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
                        .to_vec(),
                ),
                3 => ("bad header name".into(), get("/sample/x", "Bad Name: v\r\n")),
                4 => ("obs-fold".into(), get("/sample/x", "X-Fold: a\r\n  b\r\n")),
                5 => (
                    "Content-Length not a number".into(),
                    b"POST /sample/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n".to_vec(),
                ),
                6 => (
                    "Content-Length twice, different".into(),
                    b"POST /sample/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
                ),
                7 => {
                    return Case {
                        kind: "request heads",
                        what: "HTTP/2 preface".into(),
                        input: Input::Http(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
                        expect: Expect::ClosedSilently,
                    };
                }
                8 => {
                    let garbage: Vec<u8> = (0..rng.random_range(8..2000)).map(|_| rng.random_range(1u8..=255)).collect();
                    let mut bytes = garbage;
                    bytes.extend_from_slice(b"\r\n\r\n");
                    ("binary garbage".into(), bytes)
                }
                _ => (
                    "unknown Transfer-Encoding".into(),
                    b"POST /sample/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
                ),
            };
            Case { kind: "request heads", what, input: Input::Http(bytes), expect: Expect::ClientError }
        })
        .collect()
}

const PROTOCOL: &[u16] = &[1002];

fn control_cases(rng: &mut StdRng, n: usize) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let (what, bytes, expect): (String, Vec<u8>, Expect) = match i % 16 {
                0 => ("garbage text".into(), text_frame(b"{not json"), Expect::Close(PROTOCOL)),
                1 => ("JSON array".into(), text_frame(b"[1,2,3]"), Expect::Close(PROTOCOL)),
                2 => {
                    let depth = rng.random_range(200..5000);
                    let nested = format!("{{\"response\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
                    (format!("JSON nested {depth} deep"), text_frame(nested.as_bytes()), Expect::Close(PROTOCOL))
                }
                3 => {
                    let size = rng.random_range(65 * 1024..200 * 1024);
                    let json = format!("{{\"renewToken\":{{\"token\":\"{}\"}}}}", "a".repeat(size));
                    (format!("{size}-byte command"), text_frame(json.as_bytes()), Expect::Close(&[1009]))
                }
                4 => ("unknown command".into(), text_frame(br#"{"injectFault":{"delay":"00:01:00"}}"#), Expect::Alive),
                5 => (
                    "response for no request".into(),
                    text_frame(br#"{"response":{"requestId":"nope","statusCode":200,"body":false}}"#),
                    Expect::Alive,
                ),
                6 => (
                    "response with a bad status".into(),
                    text_frame(br#"{"response":{"requestId":"nope","statusCode":"abc","body":true}}"#),
                    Expect::Alive,
                ),
                7 => (
                    "renewToken with garbage".into(),
                    text_frame(br#"{"renewToken":{"token":"SharedAccessSignature sr=x"}}"#),
                    Expect::Close(&[1008]),
                ),
                8 => ("renewToken not a string".into(), text_frame(br#"{"renewToken":{"token":5}}"#), Expect::Close(PROTOCOL)),
                9 => ("text that is not UTF-8".into(), text_frame(b"{\"a\":\"\xff\xfe\"}"), Expect::Close(&[1007])),
                10 => ("stray binary message".into(), frame_bytes(0x82, true, None, b"\x00\x01"), Expect::Alive),
                11 => ("two commands in one object".into(), text_frame(br#"{"response":{},"renewToken":{}}"#), Expect::Close(PROTOCOL)),
                12 => {
                    let n = rng.random_range(1..4000);
                    let json = format!(
                        "{{\"response\":{{\"requestId\":\"r\",\"statusCode\":200,\"body\":false,\"responseHeaders\":{{{}}}}}}}",
                        (0..n).map(|j| format!("\"h{j}\":[1,null,true]")).collect::<Vec<_>>().join(",")
                    );
                    if json.len() > 64 * 1024 {
                        (format!("response with {n} headers"), text_frame(json.as_bytes()), Expect::Close(&[1009]))
                    } else {
                        (format!("response with {n} headers"), text_frame(json.as_bytes()), Expect::Alive)
                    }
                }
                13 => ("empty text".into(), text_frame(b""), Expect::Close(PROTOCOL)),
                14 => ("number".into(), text_frame(b"42"), Expect::Close(PROTOCOL)),
                _ => {
                    let junk: Vec<u8> = (0..rng.random_range(1..300)).map(|_| rng.random_range(0x20u8..0x7f)).collect();
                    ("random printable text".into(), text_frame(&junk), Expect::Close(PROTOCOL))
                }
            };
            Case { kind: "control JSON", what, input: Input::Control(bytes), expect }
        })
        .collect()
}

/// Frame-level violations; `control` says whether they go to a control channel (else a tunnel).
fn frame_cases(rng: &mut StdRng, n: usize, control: bool) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let (what, bytes, codes): (String, Vec<u8>, &'static [u16]) = match i % 11 {
                0 => {
                    let op = [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf][rng.random_range(0..10)];
                    (
                        format!("reserved opcode {op}"),
                        frame_bytes(0x80 | op, true, None, b"x"),
                        PROTOCOL,
                    )
                }
                1 => (
                    "unmasked frame".into(),
                    frame_bytes(0x82, false, None, b"data"),
                    PROTOCOL,
                ),
                2 => (
                    "fragmented ping".into(),
                    frame_bytes(0x09, true, None, b"p"),
                    PROTOCOL,
                ),
                3 => (
                    "ping over 125 bytes".into(),
                    frame_bytes(0x89, true, None, &[b'p'; 126]),
                    PROTOCOL,
                ),
                4 => (
                    "length with the top bit set".into(),
                    frame_bytes(0x82, true, Some(1 << 63 | rng.random_range(0..1000)), b""),
                    PROTOCOL,
                ),
                5 => {
                    let rsv = [0x40u8, 0x20, 0x10, 0x70][rng.random_range(0..4)];
                    (
                        format!("reserved bits {rsv:#x}"),
                        frame_bytes(0x80 | rsv | 2, true, None, b"x"),
                        PROTOCOL,
                    )
                }
                6 => (
                    "continuation first".into(),
                    frame_bytes(0x80, true, None, b"x"),
                    PROTOCOL,
                ),
                7 => (
                    "close with one byte".into(),
                    frame_bytes(0x88, true, None, &[3]),
                    PROTOCOL,
                ),
                8 => {
                    let code =
                        [0u16, 999, 1004, 1005, 1006, 1015, 5000, 65535][rng.random_range(0..8)];
                    (
                        format!("close code {code}"),
                        frame_bytes(0x88, true, None, &code.to_be_bytes()),
                        PROTOCOL,
                    )
                }
                9 => (
                    "close reason not UTF-8".into(),
                    frame_bytes(0x88, true, None, b"\x03\xe8\xff\xfe"),
                    &[1002, 1007],
                ),
                _ => {
                    let mut b = frame_bytes(0x01, true, None, b"start");
                    b.extend(frame_bytes(0x82, true, None, b"new message inside"));
                    ("data frame inside a fragmented message".into(), b, PROTOCOL)
                }
            };
            let input = if control {
                Input::Control(bytes)
            } else {
                Input::Tunnel(bytes)
            };
            Case {
                kind: if control {
                    "frames on control channels"
                } else {
                    "frames on tunnels"
                },
                what,
                input,
                expect: Expect::Close(codes),
            }
        })
        .collect()
}

/// Reads an HTTP response head; the status, or how the connection ended.
async fn read_status(io: &mut TcpStream) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), io.read(&mut chunk)).await {
            Err(_) => return Outcome::Dropped("no answer within 15 s".into()),
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => {
                return Outcome::Dropped("closed without an answer".into());
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    match line.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
        Some(status) => Outcome::Status(status),
        None => Outcome::Dropped(format!("not an HTTP answer: {:.60}", line)),
    }
}

/// Reads frames until a Close (its code) or the end of the connection.
async fn read_close(client: &mut RawClient) -> Outcome {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), client.recv()).await {
            Err(_) => return Outcome::Dropped("no close within 15 s".into()),
            Ok(Ok(Some(f))) if f.opcode == OpCode::Close => {
                return Outcome::Close(CloseFrame::parse(&f.payload).ok().and_then(|c| c.code));
            }
            Ok(Ok(Some(_))) => continue,
            Ok(_) => return Outcome::Dropped("closed without a close frame".into()),
        }
    }
}

/// After an input that should be ignored: a ping must still get its pong.
async fn probe_alive(client: &mut RawClient) -> Outcome {
    if client.send(true, OpCode::Ping, b"probe").await.is_err() {
        return Outcome::Dropped("cannot write the probe".into());
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(15), client.recv()).await {
            Ok(Ok(Some(f))) if f.opcode == OpCode::Pong && f.payload == b"probe" => {
                return Outcome::Alive;
            }
            Ok(Ok(Some(f))) if f.opcode == OpCode::Close => {
                return Outcome::Close(CloseFrame::parse(&f.payload).ok().and_then(|c| c.code));
            }
            Ok(Ok(Some(_))) => continue,
            _ => return Outcome::Dropped("no pong".into()),
        }
    }
}

async fn listen(relay: &Relay, hc: &str) -> RawClient {
    let token = relay.token(hc, "defaultListener", relay_server::now_unix() + 3600);
    let url = format!("ws://localhost:{}/$hc/{hc}?sb-hc-action=listen", relay.port);
    let h = raw::handshake(
        Box::new(relay.tcp().await),
        &url,
        &[("ServiceBusAuthorization", &token)],
    )
    .await
    .unwrap();
    assert_eq!(h.status, 101, "{}", h.reason);
    h.client
}

/// Opens a tunnel on the hybrid connection `tunnel` (whose only listener is `listener`) with
/// raw clients on both ends. Set-ups take turns on the listener, so each sees its own accept.
async fn tunnel(relay: &Relay, listener: &tokio::sync::Mutex<RawClient>) -> (RawClient, RawClient) {
    let token = relay.token("tunnel", "defaultSender", relay_server::now_unix() + 3600);
    let url = format!("ws://localhost:{}/$hc/tunnel", relay.port);
    let headers = [("ServiceBusAuthorization", token.as_str())];
    let mut l = listener.lock().await;
    let sender = raw::handshake(Box::new(relay.tcp().await), &url, &headers);
    let join = async {
        let address = loop {
            let f = l.recv().await.unwrap().expect("control channel open");
            if f.opcode == OpCode::Text {
                let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
                break v["accept"]["address"].as_str().unwrap().to_owned();
            } else if f.opcode == OpCode::Ping {
                l.send(true, OpCode::Pong, &f.payload).await.unwrap();
            }
        };
        raw::handshake(Box::new(relay.tcp().await), &address, &[])
            .await
            .unwrap()
    };
    let (s, joined) = tokio::join!(sender, join);
    let s = s.unwrap();
    assert_eq!((s.status, joined.status), (101, 101));
    (s.client, joined.client)
}

async fn run_case(relay: &Relay, case: &Case, listener: &tokio::sync::Mutex<RawClient>) -> Outcome {
    match &case.input {
        Input::Http(bytes) => {
            let mut tcp = relay.tcp().await;
            if let Err(e) = tcp.write_all(bytes).await {
                // The relay may answer and close before a huge head is written; read it.
                if e.kind() != std::io::ErrorKind::BrokenPipe
                    && e.kind() != std::io::ErrorKind::ConnectionReset
                {
                    return Outcome::Dropped(format!("write failed: {e}"));
                }
            }
            read_status(&mut tcp).await
        }
        Input::Control(bytes) => {
            let mut client = listen(relay, "sample").await;
            let _ = client.send_bytes(bytes).await;
            match case.expect {
                Expect::Alive => probe_alive(&mut client).await,
                _ => read_close(&mut client).await,
            }
        }
        Input::Tunnel(bytes) => {
            let (mut sender, _listener_side) = tunnel(relay, listener).await;
            let _ = sender.send_bytes(bytes).await;
            read_close(&mut sender).await
        }
    }
}

fn judge(case: &Case, outcome: &Outcome) -> bool {
    match (case.expect, outcome) {
        (Expect::ClientError, Outcome::Status(s)) => (400..500).contains(s),
        (Expect::Close(codes), Outcome::Close(Some(c))) => codes.contains(c),
        (Expect::Alive, Outcome::Alive) => true,
        (Expect::ClosedSilently, Outcome::Dropped(why)) => why == "closed without an answer",
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_inputs_get_4xx_or_the_documented_close_code() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let echo = servers::echo_server().await;
    // The cases address the hybrid connections `sample` and `tunnel`, next to the chain's own,
    // so they never disturb the HCM's listener or tunnels.
    let chain = ChainBuilder::new(echo.to_string())
        .plain(true)
        .relay_args(["--max-connections-per-namespace", "100000"])
        .hybrid_connection("sample")
        .hybrid_connection("tunnel")
        .start()
        .await
        .expect("chain starts");
    let mut keys = BTreeMap::new();
    for hc in ["sample", "tunnel"] {
        for rule in ["defaultSender", "defaultListener"] {
            keys.insert((hc.to_owned(), rule.to_owned()), hc_key(&chain, hc, rule));
        }
    }
    let relay = Relay {
        port: chain.relay_port,
        keys,
    };
    let rss_before = chain.relay.rss_kib();

    // Phase 1, HTTP: `sample` has no listener, so a mutated token that still verifies gets a
    // 404 rather than a rendezvous. Phase 2, channels: listeners on `sample` get the control
    // cases; `tunnel`'s one listener (ours) joins the tunnel cases.
    // MALFORMED_SHARE=10 runs a tenth of every category (for a quick look by hand).
    let share: usize = std::env::var("MALFORMED_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut rng = StdRng::seed_from_u64(0x5eed_0010);
    let mut http = Vec::new();
    http.extend(token_cases(&relay, &mut rng, 4000 / share));
    http.extend(param_cases(&mut rng, 1500 / share));
    http.extend(target_cases(&mut rng, 1500 / share));
    http.extend(head_cases(&mut rng, 800 / share));
    let mut channels = Vec::new();
    channels.extend(control_cases(&mut rng, 1100 / share));
    channels.extend(frame_cases(&mut rng, 800 / share, true));
    channels.extend(frame_cases(&mut rng, 330 / share, false));
    let cases: Vec<&Case> = http.iter().chain(channels.iter()).collect();
    let total = cases.len();
    assert!(total >= 10_000 / share);

    let listener = tokio::sync::Mutex::new(listen(&relay, "tunnel").await);
    let tally: Mutex<BTreeMap<&'static str, (usize, usize)>> = Mutex::default();
    let failures: Mutex<Vec<String>> = Mutex::default();
    let started = Instant::now();
    // At most 12 control channels at once: the relay allows 25 listeners per hybrid connection.
    for (phase, width) in [(&http, 24), (&channels, 12)] {
        futures_util::stream::iter(phase.iter())
            .for_each_concurrent(width, |case| {
                let (relay, listener, tally, failures) = (&relay, &listener, &tally, &failures);
                async move {
                    let outcome = run_case(relay, case, listener).await;
                    let ok = judge(case, &outcome);
                    let mut t = tally.lock().unwrap();
                    let entry = t.entry(case.kind).or_default();
                    entry.0 += 1;
                    if !ok {
                        entry.1 += 1;
                        failures.lock().unwrap().push(format!(
                            "[{}] {} -> {:?} (expected {:?})",
                            case.kind, case.what, outcome, case.expect
                        ));
                    }
                }
            })
            .await;
    }
    let took = started.elapsed();
    let rss_after = chain.relay.rss_kib();
    eprintln!(
        "{total} malformed inputs in {:.1} s; relay RSS {rss_before} KiB -> {rss_after} KiB",
        took.as_secs_f64()
    );
    for (kind, (n, bad)) in tally.lock().unwrap().iter() {
        eprintln!("  {kind:<28} {n:>6} inputs, {bad} unexpected");
    }
    let failures = failures.into_inner().unwrap();
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for f in &failures {
        let key = f
            .split(" -> ")
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take(60)
            .collect::<String>();
        let e = kinds.entry(key).or_insert((0, f.clone()));
        e.0 += 1;
    }
    let summary: Vec<String> = kinds
        .values()
        .map(|(n, example)| format!("{n} x {example:.300}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} unexpected answers:\n{}",
        failures.len(),
        summary.join("\n")
    );

    let log = chain.relay.log_text();
    assert_eq!(log.matches("panicked").count(), 0, "relay log:\n{log}");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "relay memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // A normal tunnel through the shim, relay and HCM still works.
    let mut tcp = TcpStream::connect(chain.forward).await.unwrap();
    tcp.write_all(b"still works").await.unwrap();
    let mut got = [0u8; 11];
    tcp.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still works", "{}", chain.logs());
}

/// The primary key of a rule of one of the relay's hybrid connections, from its keys file.
fn hc_key(chain: &Chain, hc: &str, rule: &str) -> SasKey {
    let keys =
        std::fs::read_to_string(chain.relay_data_dir().join("connection-strings.txt")).unwrap();
    let line = keys
        .lines()
        .find(|l| {
            l.contains(&format!("SharedAccessKeyName={rule};"))
                && l.ends_with(&format!("EntityPath={hc}"))
        })
        .unwrap_or_else(|| panic!("no {rule} for {hc} in\n{keys}"));
    SasKey::new(
        line.split("SharedAccessKey=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
    )
    .unwrap()
}
