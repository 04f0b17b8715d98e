//! TCP servers used as tunnel endpoints: echo (EOF answered with EOF), sink, greeter, a
//! one-file HTTP/1.0 server, and the benchmark's server, whose first byte picks echo, sink or
//! a download.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP echo server that answers EOF with EOF.
pub async fn echo_server() -> SocketAddr {
    serve(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown().await;
    })
    .await
}

/// A TCP sink: reads and discards until EOF.
pub async fn sink_server() -> SocketAddr {
    serve(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// A TCP server that writes `greeting` and closes at once, reading nothing.
pub async fn greeter_server(greeting: &'static [u8]) -> SocketAddr {
    serve(move |mut s| async move {
        let _ = s.write_all(greeting).await;
        let _ = s.shutdown().await;
    })
    .await
}

/// An HTTP/1.0 server with one document: `GET path` answers 200 with `body`, anything else
/// 404; one request per connection, closed after the answer (as `python3 -m http.server`).
pub async fn http_server(path: &'static str, body: &'static str) -> SocketAddr {
    serve(move |mut s| async move {
        // The request head, up to the blank line (16 KiB at most).
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head);
        let mut request_line = head.lines().next().unwrap_or("").split(' ');
        let found = request_line.next() == Some("GET") && request_line.next() == Some(path);
        let (status, body) = if found {
            ("200 OK", body)
        } else {
            ("404 Not Found", "not found\n")
        };
        let answer = format!(
            "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(answer.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// The benchmark's server. First byte: `E` echo, `S` sink (answers the byte count after EOF),
/// `D` + u64 N: sends N bytes and closes.
pub async fn bench_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve_mode(s));
        }
    });
    Ok(addr)
}

async fn serve_mode(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    match s.read_u8().await? {
        b'E' => loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return s.shutdown().await;
            }
            s.write_all(&buf[..n]).await?;
        },
        b'S' => {
            let mut total = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_u64(total).await?;
            s.shutdown().await
        }
        b'D' => {
            let mut left = s.read_u64().await?;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            s.shutdown().await
        }
        _ => Ok(()),
    }
}
