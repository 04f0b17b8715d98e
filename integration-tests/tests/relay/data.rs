//! The data phase (§6.4): message boundaries, large messages, order, Close forwarding with
//! half-close, aborts, per-hop pings.

use futures_util::{SinkExt as _, StreamExt as _};
use hc_protocol::frame::{CloseFrame, OpCode};
use integration_tests::raw::{RawClient, RawFrame};
use integration_tests::{TestRelay, Ws, next_close, next_data};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as TCloseFrame;

/// A tungstenite sender and listener joined through the relay.
async fn pair(relay: &TestRelay) -> (Ws, Ws) {
    let mut listener = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let (s, l) = tokio::join!(
        relay.ws(&url, &[("ServiceBusAuthorization", &token)]),
        async {
            let a = listener.next_accept().await.unwrap();
            listener.join(relay, &a, None).await
        }
    );
    (s.unwrap(), l)
}

/// Raw frame clients on both ends.
async fn raw_pair(relay: &TestRelay) -> (RawClient, RawClient) {
    let mut listener = relay.listen("sample").await;
    let token = relay.send_token("sample");
    let url = relay.url("localhost", "/$hc/sample");
    let (s, l) = tokio::join!(
        relay.raw_upgrade(&url, &[("ServiceBusAuthorization", &token)]),
        async {
            let a = listener.next_accept().await.unwrap();
            relay.raw_upgrade(&a.address, &[]).await.unwrap()
        }
    );
    let s = s.unwrap();
    assert_eq!((s.status, l.status), (101, 101));
    (s.client, l.client)
}

#[tokio::test]
async fn large_messages_cross_intact_both_ways() {
    let relay = TestRelay::default_tls().await;
    let (mut s, mut l) = pair(&relay).await;
    let big: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let (sent, got) = tokio::join!(s.send(Message::binary(big.clone())), next_data(&mut l));
    sent.unwrap();
    assert!(got.unwrap().into_data() == big, "16 MiB sender -> listener");
    let (sent, got) = tokio::join!(l.send(Message::binary(big.clone())), next_data(&mut s));
    sent.unwrap();
    assert!(got.unwrap().into_data() == big, "16 MiB listener -> sender");
}

#[tokio::test]
async fn many_messages_keep_order_and_kind_in_both_directions() {
    let relay = TestRelay::start("{}", false, Default::default()).await;
    let (s, l) = pair(&relay).await;
    let (mut s_tx, mut s_rx) = s.split();
    let (mut l_tx, mut l_rx) = l.split();
    let n = 2000;
    let send_up = async {
        for i in 0..n {
            let m = if i % 2 == 0 {
                Message::text(format!("up {i}"))
            } else {
                Message::binary(format!("up {i}").into_bytes())
            };
            s_tx.send(m).await.unwrap();
        }
    };
    let send_down = async {
        for i in 0..n {
            l_tx.send(Message::binary(vec![(i % 256) as u8; i % 700]))
                .await
                .unwrap();
        }
    };
    let recv_up = async {
        for i in 0..n {
            let m = l_rx.next().await.unwrap().unwrap();
            assert_eq!(m.is_text(), i % 2 == 0);
            assert_eq!(m.into_data(), format!("up {i}").into_bytes());
        }
    };
    let recv_down = async {
        for i in 0..n {
            assert_eq!(
                s_rx.next().await.unwrap().unwrap().into_data(),
                vec![(i % 256) as u8; i % 700]
            );
        }
    };
    tokio::join!(send_up, send_down, recv_up, recv_down);
}

#[tokio::test]
async fn fragments_and_boundaries_are_kept_and_pings_answered_per_hop() {
    let relay = TestRelay::default_tls().await;
    let (mut s, mut l) = raw_pair(&relay).await;
    s.send(false, OpCode::Text, b"hel").await.unwrap();
    s.send(true, OpCode::Ping, b"are you there").await.unwrap();
    s.send(true, OpCode::Continuation, b"lo").await.unwrap();
    s.send(true, OpCode::Binary, b"").await.unwrap();
    assert_eq!(
        s.recv().await.unwrap(),
        Some(RawFrame {
            fin: true,
            opcode: OpCode::Pong,
            payload: b"are you there".to_vec()
        })
    );
    // The listener sees the data frames only, unmasked, with opcode and FIN as sent.
    assert_eq!(
        l.recv().await.unwrap(),
        Some(RawFrame {
            fin: false,
            opcode: OpCode::Text,
            payload: b"hel".to_vec()
        })
    );
    assert_eq!(
        l.recv().await.unwrap(),
        Some(RawFrame {
            fin: true,
            opcode: OpCode::Continuation,
            payload: b"lo".to_vec()
        })
    );
    assert_eq!(
        l.recv().await.unwrap(),
        Some(RawFrame {
            fin: true,
            opcode: OpCode::Binary,
            payload: vec![]
        })
    );
}

#[tokio::test]
async fn close_is_forwarded_and_the_other_direction_keeps_flowing() {
    let relay = TestRelay::default_tls().await;
    let (mut s, mut l) = raw_pair(&relay).await;
    s.send(
        true,
        OpCode::Close,
        &CloseFrame::new(4001, "sender done").payload(),
    )
    .await
    .unwrap();
    let close = l.recv().await.unwrap().unwrap();
    assert_eq!(
        (close.opcode, CloseFrame::parse(&close.payload).unwrap()),
        (OpCode::Close, CloseFrame::new(4001, "sender done"))
    );
    // Half-close: the listener still sends, the sender still receives.
    for i in 0..3u8 {
        l.send(true, OpCode::Binary, &[i; 1000]).await.unwrap();
        assert_eq!(s.recv().await.unwrap().unwrap().payload, vec![i; 1000]);
    }
    l.send(
        true,
        OpCode::Close,
        &CloseFrame::new(1000, "listener done").payload(),
    )
    .await
    .unwrap();
    let close = s.recv().await.unwrap().unwrap();
    assert_eq!(
        CloseFrame::parse(&close.payload).unwrap(),
        CloseFrame::new(1000, "listener done")
    );
    // Both closes exchanged: the relay closes TCP on both sides.
    assert_eq!(s.recv().await.unwrap(), None);
    assert_eq!(l.recv().await.unwrap(), None);
}

#[tokio::test]
async fn close_codes_reach_a_tungstenite_peer() {
    let relay = TestRelay::default_tls().await;
    let (mut s, mut l) = pair(&relay).await;
    s.close(Some(TCloseFrame {
        code: 4002.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(next_close(&mut l).await.unwrap(), (4002, "bye".into()));
    // tungstenite sends its answer on the next poll; the answer reaches the sender.
    assert!(l.next().await.is_none_or(|r| r.is_err()));
    assert_eq!(next_close(&mut s).await.unwrap(), (4002, "bye".into()));
}

#[tokio::test]
async fn an_abort_is_propagated_as_an_abort() {
    let relay = TestRelay::default_tls().await;
    for sender_aborts in [true, false] {
        let (s, l) = raw_pair(&relay).await;
        let (aborting, mut other) = if sender_aborts { (s, l) } else { (l, s) };
        drop(aborting);
        // No Close frame is invented: the other side just loses its connection.
        match other.recv().await {
            Ok(None) | Err(_) => {}
            Ok(Some(f)) => panic!("expected EOF or error, got {f:?}"),
        }
    }
}

#[tokio::test]
async fn protocol_errors_close_with_1002() {
    let relay = TestRelay::default_tls().await;
    let (mut s, mut l) = raw_pair(&relay).await;
    // An unmasked frame from a client breaks RFC 6455 §5.1.
    s.send_bytes(&hc_protocol::frame::encode_frame(
        OpCode::Binary,
        b"unmasked",
    ))
    .await
    .unwrap();
    let close = s.recv().await.unwrap().unwrap();
    assert_eq!(CloseFrame::parse(&close.payload).unwrap().code, Some(1002));
    assert!(matches!(l.recv().await, Ok(None) | Err(_)));
}

#[tokio::test]
async fn a_slow_reader_stalls_the_writer_and_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const FRAME: usize = 1 << 20;
    const LIMIT: usize = 64;
    let relay = TestRelay::start("{}", false, Default::default()).await;
    let (mut s, mut l) = raw_pair(&relay).await;
    let frame_bytes = |i: usize| vec![(i % 251) as u8; FRAME];
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let written = written.clone();
        async move {
            for i in 0..LIMIT {
                s.send(true, OpCode::Binary, &frame_bytes(i)).await.unwrap();
                written.store(i + 1, Ordering::SeqCst);
            }
            s
        }
    });
    // The listener does not read. With one relay buffer per direction and bounded kernel
    // socket buffers, the writer must stop making progress long before LIMIT MiB.
    let (mut last, mut still) = (usize::MAX, 0);
    while still < 4 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now = written.load(Ordering::SeqCst);
        assert!(
            now < LIMIT,
            "the relay took all {LIMIT} MiB for a reader that does not read"
        );
        (last, still) = if now == last {
            (last, still + 1)
        } else {
            (now, 0)
        };
    }
    // Once the listener reads, everything arrives, whole and in order, and the writer finishes.
    for i in 0..LIMIT {
        let f = l.recv().await.unwrap().unwrap();
        assert_eq!(
            (f.opcode, f.payload.len()),
            (OpCode::Binary, FRAME),
            "frame {i}"
        );
        assert!(f.payload == frame_bytes(i), "frame {i} content");
    }
    writer.await.unwrap();
    eprintln!("writer stalled after {last} MiB");
    assert!(last < LIMIT / 2, "writer stalled after {last} MiB");
}
