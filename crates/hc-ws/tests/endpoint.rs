//! The endpoint over in-memory pipes with small capacities: message reassembly with control
//! frames in between, the control-frame policy (queued Pongs, bounded; Close echo or not), the
//! close state machine with half-close, write deadlines under paused time, streaming and
//! forwarding of frames larger than every buffer, and a property test that any split of the
//! input into reads gives what one read gives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hc_protocol::frame::{self, CloseFrame, FrameHeader, OpCode};
use hc_ws::{CloseState, Config, Item, Message, ReadError, Role};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};

/// Both halves of one endpoint over a pipe.
type Halves = (
    hc_ws::Reader<tokio::io::ReadHalf<DuplexStream>>,
    hc_ws::Writer<tokio::io::WriteHalf<DuplexStream>>,
);

/// What a refused input must fail with.
type Expected = fn(&ReadError) -> bool;

/// A client endpoint and a server endpoint joined by a pipe of `capacity` bytes.
fn pair(capacity: usize, client: Config, server: Config) -> (Halves, Halves) {
    let (a, b) = tokio::io::duplex(capacity);
    (hc_ws::split(a, client), hc_ws::split(b, server))
}

fn masked(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let mut h = [0u8; frame::MAX_HEADER_LEN];
    let n = FrameHeader {
        fin,
        opcode,
        mask: Some(mask),
        payload_len: payload.len() as u64,
    }
    .encode(&mut h);
    let mut body = payload.to_vec();
    frame::apply_mask(&mut body, mask, 0);
    [&h[..n], &body[..]].concat()
}

#[tokio::test]
async fn messages_reassemble_around_control_frames_and_pings_are_answered_by_the_writer() {
    let ((mut cr, mut cw), (mut sr, mut sw)) =
        pair(64, Config::new(Role::Client), Config::new(Role::Server));
    let client = async {
        cw.send_fragment(false, OpCode::Text, b"hel").await.unwrap();
        cw.ping(b"are you there").await.unwrap();
        cw.send_fragment(true, OpCode::Continuation, b"lo")
            .await
            .unwrap();
        assert_eq!(cw.pings_unanswered(), 1);
        // The server's writer answers the ping; the client's reader sees the Pong.
        assert_eq!(cr.next_message().await.unwrap(), Some(Message::Pong));
        assert_eq!(cw.pings_unanswered(), 0);
    };
    let server = async {
        assert_eq!(sr.next_message().await.unwrap(), Some(Message::Ping));
        sw.control_ready().await;
        sw.flush_control().await.unwrap();
        assert_eq!(
            sr.next_message().await.unwrap(),
            Some(Message::Text("hello".into()))
        );
    };
    tokio::join!(client, server);
}

#[tokio::test]
async fn readers_refuse_what_the_rules_forbid() {
    let cases: Vec<(Vec<u8>, Role, Expected)> = vec![
        (masked(true, OpCode::Binary, &[0; 100]), Role::Server, |e| {
            matches!(e, ReadError::TooLarge(_))
        }),
        (frame::encode_frame(OpCode::Text, b"x"), Role::Server, |e| {
            matches!(e, ReadError::Unmasked)
        }),
        (masked(true, OpCode::Text, b"x"), Role::Client, |e| {
            matches!(e, ReadError::Masked)
        }),
        (
            masked(true, OpCode::Text, b"hello")[..5].to_vec(),
            Role::Server,
            |e| matches!(e, ReadError::UnexpectedEof),
        ),
        (masked(true, OpCode::Text, b"\xff\xfe"), Role::Server, |e| {
            matches!(e, ReadError::InvalidUtf8)
        }),
        (
            masked(true, OpCode::Continuation, b"x"),
            Role::Server,
            |e| matches!(e, ReadError::OutOfSequence),
        ),
        (
            [
                masked(false, OpCode::Text, b"a"),
                masked(true, OpCode::Binary, b"b"),
            ]
            .concat(),
            Role::Server,
            |e| matches!(e, ReadError::OutOfSequence),
        ),
    ];
    for (i, (wire, role, expected)) in cases.into_iter().enumerate() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&wire).await.unwrap();
        drop(a);
        let (mut r, _w) = hc_ws::split(b, Config::new(role).max_message(64));
        let err = loop {
            match r.next_message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("case {i}: clean end"),
                Err(e) => break e,
            }
        };
        assert!(expected(&err), "case {i}: {err:?}");
    }
}

#[tokio::test]
async fn half_close_lets_the_other_side_keep_sending() {
    let ((mut cr, mut cw), (mut sr, mut sw)) =
        pair(256, Config::new(Role::Client), Config::new(Role::Server));
    cw.close(&CloseFrame::new(1000, "Shutdown")).await.unwrap();
    assert_eq!(cw.close_state(), CloseState::ClosedLocally);
    assert!(
        cw.send(OpCode::Binary, b"too late").await.is_err(),
        "no data after our Close"
    );
    assert_eq!(
        sr.next_message().await.unwrap(),
        Some(Message::Close(CloseFrame::new(1000, "Shutdown")))
    );
    assert_eq!(sw.close_state(), CloseState::ClosedByPeer);
    // Manual policy: nothing was queued; the server still sends data (.NET-style half-close).
    sw.send(OpCode::Binary, b"still answering").await.unwrap();
    assert_eq!(
        cr.next_message().await.unwrap(),
        Some(Message::Binary(b"still answering".to_vec()))
    );
    sw.close(&CloseFrame::new(1000, "")).await.unwrap();
    assert_eq!(sw.close_state(), CloseState::Closed);
    assert_eq!(
        cr.next_message().await.unwrap(),
        Some(Message::Close(CloseFrame::new(1000, "")))
    );
    assert_eq!(cr.close_state(), CloseState::Closed);
}

#[tokio::test]
async fn an_echoing_endpoint_queues_the_close_reply_once() {
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair(
        256,
        Config::new(Role::Client),
        Config::new(Role::Server).echo_close(),
    );
    cw.close(&CloseFrame::new(4000, "bye")).await.unwrap();
    assert!(matches!(
        sr.next_message().await.unwrap(),
        Some(Message::Close(_))
    ));
    sw.control_ready().await;
    sw.flush_control().await.unwrap();
    assert_eq!(sw.close_state(), CloseState::Closed);
    assert_eq!(
        cr.next_message().await.unwrap(),
        Some(Message::Close(CloseFrame::new(4000, "bye")))
    );
    // A second flush has nothing left to send: after it, the client sees the end.
    sw.flush_control().await.unwrap();
    drop((sr, sw));
    assert_eq!(cr.next_message().await.unwrap(), None);
}

#[tokio::test]
async fn queued_pongs_are_bounded() {
    let mut server_config = Config::new(Role::Server);
    server_config.control_queue = 3;
    let ((mut cr, mut cw), (mut sr, mut sw)) = pair(4096, Config::new(Role::Client), server_config);
    for i in 0..20u8 {
        cw.ping(&[i]).await.unwrap();
    }
    cw.close(&CloseFrame::new(1000, "")).await.unwrap();
    while let Some(m) = sr.next_message().await.unwrap() {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
    sw.flush_control().await.unwrap();
    sw.close(&CloseFrame::new(1000, "")).await.unwrap();
    let mut pongs = 0;
    while let Some(m) = cr.next_message().await.unwrap() {
        match m {
            Message::Pong => pongs += 1,
            Message::Close(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pongs, 3, "the queue holds 3; the other pongs were dropped");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_hits_the_write_deadline() {
    let (a, _b_never_read) = tokio::io::duplex(64);
    let (_r, mut w) = hc_ws::split(
        a,
        Config::new(Role::Server).write_timeout(Some(Duration::from_secs(5))),
    );
    let started = tokio::time::Instant::now();
    let err = w.send(OpCode::Binary, &[0u8; 10_000]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn frames_larger_than_every_buffer_stream_and_forward_intact() {
    // sender (client) -> relay endpoint (server) -> forward -> listener side (server writer)
    // -> listener (client reader): a 1 MiB frame through 257-byte pipes and 4 KiB buffers.
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let ((_sender_r, mut sender_w), (mut relay_from_sender, _relay_to_sender)) = pair(
        257,
        Config::new(Role::Client),
        Config::new(Role::Server).read_buffer(4096),
    );
    let ((mut listener_r, _listener_w), (_relay_from_listener, mut relay_to_listener)) = pair(
        257,
        Config::new(Role::Client).max_message(2 * 1024 * 1024),
        Config::new(Role::Server),
    );
    let send = async {
        sender_w
            .send_fragment(false, OpCode::Binary, &payload[..1000])
            .await
            .unwrap();
        sender_w
            .send_fragment(true, OpCode::Continuation, &payload[1000..])
            .await
            .unwrap();
    };
    let relay = async {
        let mut forwarded = 0;
        while forwarded < payload.len() as u64 {
            match relay_from_sender.next_item().await.unwrap().unwrap() {
                Item::Data(h) => {
                    forwarded +=
                        hc_ws::forward_data(&mut relay_from_sender, &h, &mut relay_to_listener)
                            .await
                            .unwrap()
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let receive = async { listener_r.next_message().await.unwrap() };
    let ((), (), got) = tokio::join!(send, relay, receive);
    assert!(
        got == Some(Message::Binary(payload.clone())),
        "1 MiB arrived whole, in order, as one message"
    );
}

#[tokio::test]
async fn client_masks_are_random() {
    let (a, mut b) = tokio::io::duplex(4096);
    let (_r, mut w) = hc_ws::split(a, Config::new(Role::Client));
    w.send(OpCode::Binary, b"same payload").await.unwrap();
    w.send(OpCode::Binary, b"same payload").await.unwrap();
    let mut wire = vec![0u8; 2 * (2 + 4 + 12)];
    tokio::io::AsyncReadExt::read_exact(&mut b, &mut wire)
        .await
        .unwrap();
    assert_ne!(wire[2..6], wire[20..24], "two frames, two masks");
    let (_r2, mut w2) = hc_ws::split(tokio::io::duplex(64).0, Config::new(Role::Client));
    let _ = w2.send(OpCode::Binary, b"x").await;
}

/// Yields its bytes in reads of the given sizes (then whatever is left).
struct Splits {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
}

impl AsyncRead for Splits {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let want = if self.sizes.is_empty() {
            usize::MAX
        } else {
            self.sizes.remove(0).max(1)
        };
        let n = want.min(buf.remaining()).min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Every message until the end or an error.
async fn all_messages<R: AsyncRead + Unpin>(r: R) -> Vec<Result<Message, String>> {
    let (mut reader, _w) = hc_ws::from_halves(
        r,
        tokio::io::sink(),
        Config::new(Role::Server).max_message(300),
    );
    let mut out = Vec::new();
    loop {
        match reader.next_message().await {
            Ok(Some(m)) => out.push(Ok(m)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
}

fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Continuation),
        Just(OpCode::Ping),
        Just(OpCode::Pong)
    ];
    (
        op,
        any::<bool>(),
        proptest::collection::vec(
            proptest::char::range('a', 'z').prop_map(|c| c as u8),
            0..200,
        ),
    )
        .prop_map(|(op, fin, payload)| {
            let (fin, payload) = if op.is_control() {
                (true, payload[..payload.len().min(125)].to_vec())
            } else {
                (fin, payload)
            };
            masked(fin, op, &payload)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the read boundaries, the reader produces what it produces from one read.
    #[test]
    fn any_read_split_gives_the_one_shot_result(frames in proptest::collection::vec(frame_strategy(), 0..12), sizes in proptest::collection::vec(1usize..40, 0..200)) {
        let wire: Vec<u8> = frames.concat();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let one_shot = runtime.block_on(all_messages(Splits { data: wire.clone(), pos: 0, sizes: vec![] }));
        let split = runtime.block_on(all_messages(Splits { data: wire, pos: 0, sizes }));
        prop_assert_eq!(one_shot, split);
    }
}
