//! Attacks on a real `aviary dev`, one test per defect of the abuse review (issue 16): each test
//! performs the attack against the binary and asserts what a legitimate user still gets.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::{Proc, WAIT, send};

/// A running `aviary dev` with the demo app's credentials.
struct Dev {
    proc: Proc,
    data_dir: PathBuf,
    app_id: String,
    api_key: String,
    admin_key: String,
}

impl Dev {
    fn start(extra: &[&str], nofile: Option<u64>) -> Dev {
        let data_dir = std::env::temp_dir().join(format!("aviary-abuse-test-{}", uuid::Uuid::new_v4().simple()));
        let dir = data_dir.to_str().expect("temp dirs are UTF-8").to_owned();
        let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", &dir];
        args.extend_from_slice(extra);
        let proc = Proc::spawn_with_nofile(&args, &[("AVIARY_OPERATOR_TOKEN", "")], nofile);
        Dev {
            app_id: proc.banner_value("app id").expect("the demo app id"),
            api_key: proc.banner_value("API key").expect("the demo API key"),
            admin_key: proc.banner_value("admin key").expect("the demo admin key"),
            proc,
            data_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.proc.url(path)
    }

    async fn token(&self, client_id: &str, capabilities: Value) -> String {
        let http = reqwest::Client::new();
        let (status, minted) = send(
            http.post(self.url(&format!("/v1/apps/{}/tokens", self.app_id)))
                .bearer_auth(&self.api_key)
                .json(&json!({"client_id": client_id, "ttl_s": 600, "capabilities": capabilities})),
        )
        .await;
        assert_eq!(status, 200, "{minted}");
        minted["token"].as_str().expect("a token").to_owned()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Opens a WebSocket and sends `connect`: `Ok` when connected, else the close code.
async fn connect_outcome(server: SocketAddr, token: &str) -> Result<(), u16> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{server}/v1/connect")).await.expect("upgrade");
    ws.send(Message::text(json!({"type": "connect", "token": token}).to_string())).await.expect("sent");
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next()).await.expect("an answer in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame["type"] == "connected" {
                    return Ok(());
                }
            }
            Some(Ok(Message::Close(close))) => return Err(close.map_or(1005, |c| u16::from(c.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Err(1006),
        }
    }
}

/// Raises this test process's own descriptor limit so it can hold the attack's sockets.
fn raise_own_nofile(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_cur.max(want.min(limit.rlim_max));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// A TCP connection to `server` from the loopback address `source` (127.0.0.0/8 is all local).
async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// One HTTP/1.1 request on a fresh connection from `source`; the status line's code and the
/// body. `None` when the server did not answer within `WAIT`.
async fn fresh_get(source: IpAddr, server: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(WAIT, async {
        let mut stream = connect_from(source, server).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {server}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split_whitespace().nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
    })
    .await
    .ok()
    .flatten()
}

/// Waits until the server closes `stream` (EOF or reset); false if it is still open at
/// `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // A refusal's 503: keep reading until the close.
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Defect 1: 1,100 silent sockets against a node whose `ulimit -n` is 256 made `/healthz` and
/// every new WebSocket time out. Now the silent sockets are capped per source address, the
/// descriptor budget keeps a reserve that answers health checks, anything else is refused with
/// a 503 problem, and the silent sockets are closed after the header timeout.
#[tokio::test]
async fn silent_sockets_cannot_lock_the_node_out() {
    const SILENT: usize = 1_100;
    raise_own_nofile(4096);
    let dev = Dev::start(&["--http-header-timeout-s", "5", "--max-pending-per-ip", "64"], Some(256));
    let server = dev.proc.addr;
    let token = dev.token("victim", json!({"chat:*": ["subscribe"]})).await;

    // The attack: 1,100 connections that never send a byte, from eleven source addresses.
    let mut silent = Vec::with_capacity(SILENT);
    for i in 0..SILENT {
        let source = IpAddr::from([127, 0, 0, 2 + (i % 11) as u8]);
        if let Ok(stream) = connect_from(source, server).await {
            silent.push(stream);
        }
    }
    assert!(silent.len() > 1_000, "the attack opened {} sockets", silent.len());

    // A health check from elsewhere still gets an answer (from the reserve if need be), never a
    // timeout; a new WebSocket gets through or is refused with a problem document.
    let me = IpAddr::from([127, 0, 0, 1]);
    let metrics = dev.proc.metrics_url("").trim_start_matches("http://").parse().expect("metrics address");
    let (status, body) = fresh_get(me, metrics, "/healthz").await.expect("the operator's /healthz answers");
    assert_eq!(status, 200, "{body}");
    // On the public port every answer is a 200 (from the health-check reserve) or a 503
    // problem; once the reserve's silent sockets time out (1 s), health checks get 200.
    let deadline = tokio::time::Instant::now() + WAIT;
    let attack_started = std::time::Instant::now();
    loop {
        let asked = std::time::Instant::now();
        let (status, body) = fresh_get(me, server, "/healthz").await.expect("/healthz answers during the attack");
        eprintln!(
            "/healthz during the attack: {status} in {:?} ({:?} into it)",
            asked.elapsed(),
            attack_started.elapsed()
        );
        if status == 200 {
            break;
        }
        assert!(body.contains("https://aviary.dev/problems/connection-refused"), "{status} {body}");
        assert!(tokio::time::Instant::now() < deadline, "/healthz never answered 200 during the attack");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let asked = std::time::Instant::now();
    let upgrade =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{server}/v1/connect"))).await;
    eprintln!("a new WebSocket during the attack: answered in {:?}", asked.elapsed());
    match upgrade {
        Err(_) => panic!("a new WebSocket hung during the attack"),
        Ok(Ok(_)) => {}
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("https://aviary.dev/problems/connection-refused"), "{body}");
        }
        Ok(Err(e)) => panic!("a new WebSocket failed without a clear refusal: {e}"),
    }

    // The server closes every silent socket: refused ones at once, admitted ones at the header
    // timeout (5 s here).
    for stream in &mut silent {
        assert!(closed_by_server(stream, Duration::from_secs(30)).await, "a silent socket outlived the header timeout");
    }
    drop(silent);

    // Once the attackers are gone the node serves normally again.
    let (status, body) = fresh_get(me, server, "/healthz").await.expect("/healthz answers");
    assert_eq!(status, 200, "{body}");
    let ws = common::connect(&format!("ws://{server}/v1/connect"), &token).await;
    drop(ws);
}

/// Defect 2: the API key id is public (it travels in every token as `akid`), and wrong-secret
/// guesses for it queued ahead of the right secret: a cold key's first legitimate request
/// waited 2.2–6.9 s behind 64–200 guessers. Now guesses never queue ahead of it, each source
/// address has a budget of failed checks (then 429), and the legitimate request gets through.
#[tokio::test]
async fn wrong_secret_guesses_do_not_stall_the_right_key() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const GUESSERS: usize = 200;
    raise_own_nofile(4096);
    let dev = Dev::start(&[], None);
    let key_id = dev.api_key.split('_').nth(1).expect("avk_<id>_<secret>").to_owned();
    let publish = dev.url(&format!("/v1/apps/{}/channels/chat:guess/messages", dev.app_id));
    let attacker = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .pool_max_idle_per_host(GUESSERS)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(tokio::sync::Semaphore::new(0));
    let (refused, throttled, accepted) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut guessers = Vec::new();
    for g in 0..GUESSERS {
        let (attacker, publish, key_id, stop, answered) =
            (attacker.clone(), publish.clone(), key_id.clone(), stop.clone(), answered.clone());
        let (refused, throttled, accepted) = (refused.clone(), throttled.clone(), accepted.clone());
        guessers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let guess = format!("avk_{key_id}_{:0>40}", format!("{g}x{n}"));
                let Ok(res) = attacker.post(&publish).bearer_auth(guess).json(&json!({"data": "guess"})).send().await
                else {
                    continue;
                };
                match res.status().as_u16() {
                    401 => refused.fetch_add(1, Ordering::Relaxed),
                    429 => throttled.fetch_add(1, Ordering::Relaxed),
                    _ => accepted.fetch_add(1, Ordering::Relaxed),
                };
                answered.add_permits(1);
            }
        }));
    }
    // The attack is in full swing once every guesser has had an answer on average.
    let swing = tokio::time::timeout(Duration::from_secs(60), answered.acquire_many(GUESSERS as u32)).await;
    swing.expect("the guessers got answers").unwrap().forget();

    // The legitimate backend, from another address, with the key's first use in this process
    // (its cache is cold).
    let backend = reqwest::Client::builder().local_address(IpAddr::from([127, 0, 0, 1])).build().unwrap();
    let started = std::time::Instant::now();
    let (status, body) =
        send(backend.post(&publish).bearer_auth(&dev.api_key).json(&json!({"data": "legitimate"}))).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for g in guessers {
        g.await.unwrap();
    }
    eprintln!(
        "legitimate first use behind {GUESSERS} guessers: {status} after {waited:?}; guesses refused 401: {}, 429: {}",
        refused.load(Ordering::Relaxed),
        throttled.load(Ordering::Relaxed)
    );
    assert_eq!(status, 201, "the right key got through the guessing: {body}");
    assert_eq!(accepted.load(Ordering::Relaxed), 0, "no guess was accepted");
    assert!(throttled.load(Ordering::Relaxed) > 0, "the guessing address was rate-limited (429)");
}

/// Defect 6: revocation compared whole seconds, so a token minted in the same second as
/// `POST .../clients/{id}/revoke` was refused for its whole life. Now the cutoff and the
/// token's issue time (its UUIDv7 `jti`) are compared in milliseconds.
#[tokio::test]
async fn a_token_minted_right_after_a_revocation_connects() {
    let dev = Dev::start(&[], None);
    let server = dev.proc.addr;
    let before = dev.token("carol", json!({"chat:*": ["subscribe"]})).await;
    let http = reqwest::Client::new();
    let (status, revoked) =
        send(http.post(dev.url(&format!("/v1/apps/{}/clients/carol/revoke", dev.app_id))).bearer_auth(&dev.admin_key))
            .await;
    assert_eq!(status, 200, "{revoked}");
    let after = dev.token("carol", json!({"chat:*": ["subscribe"]})).await;
    assert_eq!(connect_outcome(server, &before).await, Err(4010), "the earlier token is revoked");
    assert_eq!(connect_outcome(server, &after).await, Ok(()), "a token minted after the revocation connects");
}

/// Defect 7: `/metrics` listed every tenant and app to anyone on the public port. Now it is
/// served only on the metrics listener (loopback by default), with the per-tenant series kept
/// for the operator.
#[tokio::test]
async fn metrics_are_not_served_on_the_public_port() {
    let dev = Dev::start(&[], None);
    let _ = dev.token("metrics-probe", json!({"chat:*": ["subscribe"]})).await;
    let http = reqwest::Client::new();
    let public = http.get(dev.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "no metrics on the public port");
    let operator = http.get(dev.proc.metrics_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(operator.contains("tenant=\""), "per-tenant series are kept for the operator: {operator}");
    assert!(dev.proc.metrics_url("/metrics").starts_with("http://127.0.0.1:"), "loopback by default");
}

/// Opens a WebSocket by hand (so the test can then write frames no library would) and returns
/// the socket after the `101`.
async fn raw_websocket(server: SocketAddr) -> TcpStream {
    raw_websocket_on(TcpStream::connect(server).await.expect("connects"), server).await
}

/// As [`raw_websocket`], on a connection the caller opened.
async fn raw_websocket_on(mut stream: TcpStream, server: SocketAddr) -> TcpStream {
    let request = format!(
        "GET /v1/connect HTTP/1.1\r\nhost: {server}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, stream.read_exact(&mut byte)).await.expect("a handshake answer").unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// A masked client frame: `first` is the FIN/RSV/opcode byte.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![first];
    match u16::try_from(payload.len()) {
        Ok(n) if n < 126 => frame.push(0x80 | n as u8),
        Ok(n) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => panic!("test frames stay under 64 KiB"),
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The next server frame: its opcode and payload; `None` at the end of the stream.
async fn server_frame(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head)).await.expect("a frame in time").ok()?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.ok()?;
            usize::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).await.ok()?;
            u64::from_be_bytes(ext) as usize
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    tokio::time::timeout(WAIT, stream.read_exact(&mut payload)).await.expect("a frame in time").ok()?;
    Some((head[0] & 0x0f, payload))
}

/// Reads server frames until the close frame: the `disconnect` frame's JSON and the close code.
async fn farewell(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (Option<Value>, Option<u16>) {
    let mut disconnect = None;
    while let Some((opcode, payload)) = server_frame(stream).await {
        match opcode {
            0x1 => {
                let frame: Value = serde_json::from_slice(&payload).expect("JSON text frame");
                if frame["type"] == "disconnect" {
                    disconnect = Some(frame);
                }
            }
            0x8 => return (disconnect, (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
            _ => {}
        }
    }
    (disconnect, None)
}

/// Sends `frame` as a text frame on a raw WebSocket and returns the next text frame whose `id`
/// or `type` matches `answer`.
async fn raw_request(stream: &mut TcpStream, frame: Value, answer: &str) -> Value {
    stream.write_all(&client_frame(0x81, frame.to_string().as_bytes())).await.unwrap();
    loop {
        let (opcode, payload) = server_frame(stream).await.expect("an answer");
        if opcode == 0x1 {
            let reply: Value = serde_json::from_slice(&payload).unwrap();
            if reply["type"] == answer || reply["id"].as_u64().is_some_and(|id| id.to_string() == answer) {
                return reply;
            }
        }
    }
}

/// Defect 9: WebSocket protocol violations closed the socket with no status (1005) and no
/// `disconnect` frame. Now invalid UTF-8 gets 1007 and other violations 1002, each announced
/// by a `disconnect` frame with the same code.
#[tokio::test]
async fn websocket_protocol_violations_get_their_close_codes() {
    let dev = Dev::start(&[], None);
    let server = dev.proc.addr;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("invalid UTF-8 in a text frame", client_frame(0x81, &[0x7b, 0xff, 0xfe, 0x7d]), 1007),
        ("a reserved opcode", client_frame(0x83, b"{}"), 1002),
        ("a continuation without a start", client_frame(0x80, b"{}"), 1002),
    ];
    for (what, frame, code) in cases {
        let mut ws = raw_websocket(server).await;
        ws.write_all(&frame).await.unwrap();
        let (disconnect, close) = farewell(&mut ws).await;
        let disconnect = disconnect.unwrap_or_else(|| panic!("{what}: no disconnect frame"));
        assert_eq!(disconnect["code"], code, "{what}: {disconnect}");
        assert_eq!(close, Some(code), "{what}: close code");
    }
}

/// Defect 4: idempotency keys were shared by every publisher of a channel, so a client that used
/// a backend's key first (`order-1234` with `cancelled`) made the backend's `paid` answer 201
/// with the client's position and never deliver. Keys are now scoped to their publisher, and a
/// repeat with another payload is refused with 409.
#[tokio::test]
async fn a_client_cannot_suppress_a_backend_publication_with_its_idempotency_key() {
    let dev = Dev::start(&[], None);
    let watcher_token = dev.token("watcher", json!({"orders:*": ["subscribe"]})).await;
    let mallory_token = dev.token("mallory", json!({"orders:*": ["publish"]})).await;
    let mut watcher = common::connect(&dev.proc.ws_url(), &watcher_token).await;
    let ok = common::request(&mut watcher, 1, json!({"type": "subscribe", "channel": "orders:42"})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut mallory = common::connect(&dev.proc.ws_url(), &mallory_token).await;
    let first = common::request(
        &mut mallory,
        1,
        json!({"type": "publish", "channel": "orders:42", "data": "cancelled", "idempotency_key": "order-1234"}),
    )
    .await;
    assert_eq!(first["type"], "ok", "{first}");

    let http = reqwest::Client::new();
    let publish = dev.url(&format!("/v1/apps/{}/channels/orders:42/messages", dev.app_id));
    let paid = json!({"data": "paid", "idempotency_key": "order-1234"});
    let (status, backend) = send(http.post(&publish).bearer_auth(&dev.api_key).json(&paid)).await;
    assert_eq!(status, 201, "{backend}");
    assert_ne!(backend["offset"], first["offset"], "the backend's message got its own position: {backend} {first}");
    let delivered: Vec<Value> =
        vec![common::next_of_type(&mut watcher, "message").await, common::next_of_type(&mut watcher, "message").await];
    assert_eq!(delivered[0]["data"], "cancelled");
    assert_eq!(delivered[1]["data"], "paid", "the backend's publication was delivered");

    // The backend's own retry is still idempotent; a retry with another payload is refused.
    let (status, again) = send(http.post(&publish).bearer_auth(&dev.api_key).json(&paid)).await;
    assert_eq!((status, &again["offset"]), (201, &backend["offset"]), "{again}");
    let (status, conflict) = send(
        http.post(&publish)
            .bearer_auth(&dev.api_key)
            .json(&json!({"data": "refunded", "idempotency_key": "order-1234"})),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["type"], "https://aviary.dev/problems/conflict");
}

/// base64url without padding (the SSE event-id encoding), so the test can craft an id.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Defect 3: a subscribe-only token read everything retained with `subscribe` + `since
/// {epoch, 0}` (the epoch is in any subscribe reply), and over SSE with a crafted
/// `Last-Event-ID`. Without the `history` capability, resume now reaches back only to the
/// token's issue time; further is `recovered: false` with nothing replayed, on both transports.
#[tokio::test]
async fn a_subscribe_only_token_cannot_read_history_by_resuming() {
    use futures::StreamExt;
    let dev = Dev::start(&[], None);
    let http = reqwest::Client::new();
    let publish = dev.url(&format!("/v1/apps/{}/channels/chat:secret/messages", dev.app_id));
    let (status, first) =
        send(http.post(&publish).bearer_auth(&dev.api_key).json(&json!({"data": "old secret"}))).await;
    assert_eq!(status, 201, "{first}");
    let epoch = first["epoch"].as_str().unwrap().to_owned();

    // A history-capable token resumes from the start of the stream.
    let reader = dev.token("reader", json!({"chat:*": ["subscribe", "history"]})).await;
    let mut ws = common::connect(&dev.proc.ws_url(), &reader).await;
    let since = json!({"epoch": epoch, "offset": 0});
    let ok = common::request(&mut ws, 1, json!({"type": "subscribe", "channel": "chat:secret", "since": since})).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(common::next_of_type(&mut ws, "message").await["data"], "old secret");

    // A subscribe-only token minted afterwards gets nothing from before it.
    let snoop = dev.token("snoop", json!({"chat:*": ["subscribe"]})).await;
    let mut ws = common::connect(&dev.proc.ws_url(), &snoop).await;
    let ok = common::request(&mut ws, 1, json!({"type": "subscribe", "channel": "chat:secret", "since": since})).await;
    assert_eq!(ok["recovered"], false, "resume beyond the capability is refused: {ok}");
    let (status, _) = send(http.post(&publish).bearer_auth(&dev.api_key).json(&json!({"data": "live"}))).await;
    assert_eq!(status, 201);
    assert_eq!(common::next_of_type(&mut ws, "message").await["data"], "live", "nothing older was replayed first");

    // The same over SSE with a crafted Last-Event-ID.
    let id = format!("v1.{}", base64url(json!({"chat:secret": [epoch, 0]}).to_string().as_bytes()));
    let response = http
        .get(dev.url("/v1/sse?channels=chat:secret"))
        .bearer_auth(&snoop)
        .header("last-event-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let subscribed = tokio::time::timeout(WAIT, async {
        loop {
            text.push_str(&String::from_utf8_lossy(&body.next().await.expect("stream open").unwrap()));
            if let Some(line) = text.lines().find(|l| l.starts_with("data: ") && l.contains("\"subscribed\"")) {
                return serde_json::from_str::<Value>(&line["data: ".len()..]).unwrap();
            }
        }
    })
    .await
    .expect("a subscribed event");
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert!(!text.contains("old secret"), "{text}");
}

/// Defect 8: after a `refresh` to `news:*`, an earlier `chat:*` subscription kept receiving.
/// Now the subscriptions the new token does not allow end, each with an `unsubscribed` push
/// naming the reason.
#[tokio::test]
async fn refresh_that_narrows_capabilities_ends_disallowed_subscriptions() {
    let dev = Dev::start(&[], None);
    let broad = dev.token("narrowed", json!({"chat:*": ["subscribe"], "news:*": ["subscribe"]})).await;
    let narrow = dev.token("narrowed", json!({"news:*": ["subscribe"]})).await;
    let mut ws = common::connect(&dev.proc.ws_url(), &broad).await;
    for (id, channel) in [(1, "chat:lobby"), (2, "news:today")] {
        let ok = common::request(&mut ws, id, json!({"type": "subscribe", "channel": channel})).await;
        assert_eq!(ok["type"], "ok", "{ok}");
    }
    // The push comes before the refresh's `ok`.
    common::send_frame(&mut ws, json!({"type": "refresh", "id": 3, "token": narrow})).await;
    let ended = common::next_of_type(&mut ws, "unsubscribed").await;
    let ok = common::next_matching(&mut ws, |f| f["id"] == 3).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ended["channel"], "chat:lobby", "{ended}");
    assert!(ended["reason"].as_str().is_some_and(|r| !r.is_empty()), "{ended}");

    let http = reqwest::Client::new();
    for (channel, data) in [("chat:lobby", "not for you"), ("news:today", "for you")] {
        let url = dev.url(&format!("/v1/apps/{}/channels/{channel}/messages", dev.app_id));
        let (status, _) = send(http.post(url).bearer_auth(&dev.api_key).json(&json!({"data": data}))).await;
        assert_eq!(status, 201);
    }
    let message = common::next_of_type(&mut ws, "message").await;
    assert_eq!((message["channel"].as_str(), message["data"].as_str()), (Some("news:today"), Some("for you")));
}

/// Defect 10 (in part): `GET /v1/connect` without an upgrade and `/v1/sse` without `channels`
/// answered 400 `text/plain`; every refusal is a problem document.
#[tokio::test]
async fn transport_refusals_are_problem_documents() {
    let dev = Dev::start(&[], None);
    let http = reqwest::Client::new();
    for path in ["/v1/connect", "/v1/sse"] {
        let response = http.get(dev.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let kind = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
        assert_eq!(kind, "application/problem+json", "{path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "https://aviary.dev/problems/bad-request", "{path}: {problem}");
    }
}

/// The server's resident memory, in KiB.
fn rss_kib(dev: &Dev) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", dev.proc.child.id())).expect("/proc readable");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB")
}

/// Whether the server process still holds a socket for the TCP connection `client` (its
/// descriptor): `/proc/net/tcp` shows the connection with the socket's inode while a process
/// has it open, and inode 0 once it is closed (the kernel may keep an orphan delivering the rest
/// of the send buffer to a client that reads too slowly to take it).
fn server_holds_connection(server: SocketAddr, client: SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp readable");
    let (local, remote) = (format!(":{:04X}", server.port()), format!(":{:04X}", client.port()));
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 9 && fields[1].ends_with(&local) && fields[2].ends_with(&remote) && fields[9] != "0"
    })
}

/// Local subscribers of `channel` (the REST listing).
async fn subscribers(dev: &Dev, channel: &str) -> u64 {
    let http = reqwest::Client::new();
    let url = dev.url(&format!("/v1/apps/{}/channels?prefix={channel}", dev.app_id));
    let (status, listing) = send(http.get(url).bearer_auth(&dev.api_key)).await;
    assert_eq!(status, 200, "{listing}");
    let channels = listing["channels"].as_array().expect("a channel list");
    channels.iter().find(|c| c["channel"] == channel).map_or(0, |c| c["subscribers"].as_u64().unwrap())
}

/// Publishes `count` messages of `bytes` bytes each to `channel` in batches, waiting out the
/// message rate limit (429) when it answers.
async fn flood(dev: &Dev, channel: &str, count: usize, bytes: usize) {
    let http = reqwest::Client::new();
    let url = dev.url(&format!("/v1/apps/{}/messages", dev.app_id));
    let payload = "f".repeat(bytes);
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(50);
        let messages: Vec<Value> = (0..batch).map(|_| json!({"channel": channel, "data": payload})).collect();
        let (status, body) = send(http.post(&url).bearer_auth(&dev.api_key).json(&json!({"messages": messages}))).await;
        match status {
            200 | 201 => sent += batch,
            429 => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => panic!("batch publish: {status} {body}"),
        }
    }
}

/// A TCP connection with a small receive buffer, so a client that does not read stalls the
/// server's writes after a few kilobytes.
async fn small_buffer_connection(server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(server).await.expect("connects")
}

/// Defect 5, WebSocket: a client that stopped reading got a bare TCP close, without the
/// documented 4008: on close the writer still had to get its whole backlog (up to the queue's
/// capacity) to the client within the close deadline, which a slow reader cannot take. Now the
/// rest of the backlog is dropped, so the `disconnect` frame and close code 4008 follow the few
/// frames already in the socket's buffer; a client that reads keeps receiving everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_is_told_4008_and_readers_are_unaffected() {
    const CHANNEL: &str = "cursors:ws-flood";
    let dev = Dev::start(&["--outbound-queue", "256"], None);
    let caps = json!({"cursors:*": ["subscribe"]});
    let (slow_token, reader_token) = (dev.token("slow", caps.clone()).await, dev.token("reader", caps).await);
    let stream = small_buffer_connection(dev.proc.addr).await;
    let mut slow = raw_websocket_on(stream, dev.proc.addr).await;
    let connected = raw_request(&mut slow, json!({"type": "connect", "token": slow_token}), "connected").await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let ok = raw_request(&mut slow, json!({"type": "subscribe", "id": 1, "channel": CHANNEL}), "1").await;
    assert_eq!(ok["type"], "ok", "{ok}");

    // A reader on the same channel counts what it receives, in its own task.
    let mut reader = common::connect(&dev.proc.ws_url(), &reader_token).await;
    let ok = common::request(&mut reader, 1, json!({"type": "subscribe", "channel": CHANNEL})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        loop {
            let frame = common::next_of_type(&mut reader, "message").await;
            if seen_tx.send(frame["offset"].as_u64().unwrap()).is_err() {
                return reader;
            }
        }
    });

    // Publish until the slow client, which reads nothing meanwhile, has been cut (the channel
    // keeps one subscriber). The reader gets each batch before the next is sent, so however
    // loaded the machine, it never falls behind.
    let mut published = 0;
    while subscribers(&dev, CHANNEL).await > 1 {
        assert!(published < 4_000, "the slow consumer was never cut");
        flood(&dev, CHANNEL, 50, 60_000).await;
        published += 50;
        for _ in 0..50 {
            tokio::time::timeout(WAIT, seen_rx.recv()).await.expect("the reader receives everything").unwrap();
        }
    }

    // The slow client reads again, slowly (32 KiB every 100 ms): what the socket holds, then the
    // farewell. The writer was cut in the middle of a burst of up to 50 frames of 60 kB (3 MB, 9 s
    // at this pace, longer than the 5 s close deadline); only what the socket's buffer holds
    // now stands between the client and its farewell.
    let (mut near, mut far) = tokio::io::duplex(64 * 1024);
    let pace = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut taken = 0;
            while taken < 32 * 1024 {
                match slow.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if near.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        taken += n;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (disconnect, code) =
        tokio::time::timeout(Duration::from_secs(60), farewell(&mut far)).await.expect("the slow client's stream ends");
    pace.abort();
    let disconnect = disconnect.expect("a disconnect frame before the close");
    assert_eq!((disconnect["code"].as_u64(), disconnect["reconnect"].as_bool()), (Some(4008), Some(true)));
    assert_eq!(code, Some(4008), "close code");

    // The reader still receives; the next message after this ends its task.
    flood(&dev, CHANNEL, 1, 16).await;
    tokio::time::timeout(WAIT, seen_rx.recv()).await.expect("the reader still receives").unwrap();
    drop(seen_rx);
    flood(&dev, CHANNEL, 1, 16).await;
    let mut reader = reading.await.unwrap();
    common::send_frame(&mut reader, json!({"type": "ping", "id": 2})).await;
    assert_eq!(common::next_of_type(&mut reader, "pong").await["id"], 2);
}

/// Defect 5, WebSocket, the write deadline: a client that never reads, on a channel too quiet to
/// overflow its queue, held its subscription, task and socket until the heartbeat gave up on it.
/// Now a write that makes no progress for `--write-timeout-s` cuts it as a slow consumer: the
/// subscription goes at once and the socket after the close deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_reads_is_cut_at_the_write_deadline() {
    const CHANNEL: &str = "cursors:ws-stall";
    // 300 frames of 60 kB (18 MB): more than any kernel's socket buffers take, far fewer than
    // the queue's 1024 slots, so only the write deadline can cut the client.
    let dev = Dev::start(&["--write-timeout-s", "2"], None);
    let token = dev.token("stalled", json!({"cursors:*": ["subscribe"]})).await;
    let stream = small_buffer_connection(dev.proc.addr).await;
    let client = stream.local_addr().unwrap();
    let mut stalled = raw_websocket_on(stream, dev.proc.addr).await;
    let connected = raw_request(&mut stalled, json!({"type": "connect", "token": token}), "connected").await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let ok = raw_request(&mut stalled, json!({"type": "subscribe", "id": 1, "channel": CHANNEL}), "1").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert!(server_holds_connection(dev.proc.addr, client), "the server holds the client's socket");

    flood(&dev, CHANNEL, 300, 60_000).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while subscribers(&dev, CHANNEL).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stalled client is still subscribed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The farewell and the close handshake each wait at most the 5 s close deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server_holds_connection(dev.proc.addr, client) {
        assert!(tokio::time::Instant::now() < deadline, "the server still holds the stalled client's socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
}

/// Defect 5, SSE: a never-reading SSE client that overflowed its queue stayed subscribed and
/// held its connection for 60 s or more. Now its stream ends when its queue overflows or a
/// write waits `--write-timeout-s` for room: the subscription goes at once and the socket within
/// the close timeout, memory stays bounded, and a client that reads receives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_that_stops_draining_loses_its_slot() {
    use futures::StreamExt;
    const CHANNEL: &str = "cursors:sse-flood";
    const MESSAGES: usize = 2_000;
    const BYTES: usize = 16 * 1024;
    let dev = Dev::start(&["--outbound-queue", "64", "--write-timeout-s", "5"], None);
    let caps = json!({"cursors:*": ["subscribe"]});
    let (slow_token, reader_token) = (dev.token("slow", caps.clone()).await, dev.token("reader", caps).await);

    // The never-reading client: a raw request on a socket with a small receive buffer.
    let mut slow = small_buffer_connection(dev.proc.addr).await;
    let request = format!(
        "GET /v1/sse?channels={CHANNEL} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {slow_token}\r\n\r\n",
        dev.proc.addr
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    // A reader on the same channel, counting message events in its own task.
    let response = reqwest::Client::new()
        .get(dev.url(&format!("/v1/sse?channels={CHANNEL}")))
        .bearer_auth(&reader_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if !event.contains("event:") && event.contains("data: {\"type\":\"message\"") {
                    let _ = seen_tx.send(());
                }
            }
        }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while subscribers(&dev, CHANNEL).await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "both streams subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = slow.local_addr().unwrap();
    assert!(server_holds_connection(dev.proc.addr, client), "the server holds the slow stream's socket");

    // The reader gets each batch before the next is sent, so however loaded the machine, it
    // never falls behind (its socket buffers take a batch without stalling the server).
    let before = rss_kib(&dev);
    for _ in 0..MESSAGES / 25 {
        flood(&dev, CHANNEL, 25, BYTES).await;
        for _ in 0..25 {
            tokio::time::timeout(WAIT, seen_rx.recv()).await.expect("the reader receives everything").unwrap();
        }
    }
    let grown = rss_kib(&dev).saturating_sub(before);
    eprintln!("server memory grew by {grown} KiB while {} MiB went out", MESSAGES * BYTES / (1 << 20));
    assert!(grown < (MESSAGES * BYTES / 1024 / 2) as u64, "memory grew by {grown} KiB");

    // The slow stream lost its subscription, then its socket.
    let deadline = tokio::time::Instant::now() + WAIT;
    while subscribers(&dev, CHANNEL).await > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the slow stream is still subscribed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Within the 5 s close deadline; the margin is for a loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server_holds_connection(dev.proc.addr, client) {
        assert!(tokio::time::Instant::now() < deadline, "the server still holds the slow stream's socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The reader still receives.
    flood(&dev, CHANNEL, 1, 16).await;
    tokio::time::timeout(WAIT, seen_rx.recv()).await.expect("the reader still receives").unwrap();
    reading.abort();
}

/// Asserts `response` is a problem document of type `slug` and returns it.
async fn expect_problem(response: reqwest::Response, status: u16, slug: &str, what: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let kind = response.headers().get(reqwest::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(kind.as_deref(), Some("application/problem+json"), "{what}");
    let problem: Value = response.json().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(problem["type"], format!("https://aviary.dev/problems/{slug}"), "{what}: {problem}");
    problem
}

/// Defect 10 (the rest): a wrong method on a data-plane route answered 405 with an empty body,
/// and the data plane took only `Bearer` in exactly that case. Now every route of both planes
/// (and the pages) answers a wrong method with a 405 problem and `Allow`, unknown paths and bad
/// bodies are problems too, and `bearer` works on REST and SSE as on the control plane.
#[tokio::test]
async fn every_refusal_is_a_problem_document_and_the_bearer_scheme_is_case_insensitive() {
    use reqwest::Method;
    let dev = Dev::start(&[], None);
    let app = &dev.app_id;
    let http = reqwest::Client::new();
    // Route × a method it does not serve, with one method it does serve (in `Allow`).
    let routes: Vec<(String, &str, Vec<Method>)> = vec![
        (format!("/v1/apps/{app}/channels/chat:t/messages"), "POST", vec![Method::GET, Method::PUT, Method::DELETE]),
        (format!("/v1/apps/{app}/messages"), "POST", vec![Method::GET, Method::PATCH]),
        (format!("/v1/apps/{app}/channels/chat:t/history"), "GET", vec![Method::POST, Method::DELETE]),
        (format!("/v1/apps/{app}/channels/chat:t/presence"), "GET", vec![Method::POST]),
        (format!("/v1/apps/{app}/channels"), "GET", vec![Method::POST, Method::PUT]),
        ("/v1/connect".to_owned(), "GET", vec![Method::POST]),
        ("/v1/sse".to_owned(), "GET", vec![Method::POST, Method::DELETE]),
        ("/apps/1/channels".to_owned(), "GET", vec![Method::POST]),
        ("/v1/tenants".to_owned(), "POST", vec![Method::PUT, Method::DELETE]),
        (format!("/v1/apps/{app}/tokens"), "POST", vec![Method::GET]),
        ("/.well-known/jwks.json".to_owned(), "GET", vec![Method::POST]),
        ("/healthz".to_owned(), "GET", vec![Method::POST]),
        ("/openapi.json".to_owned(), "GET", vec![Method::DELETE]),
        ("/demo/token".to_owned(), "POST", vec![Method::GET]),
    ];
    for (path, allowed, methods) in &routes {
        for method in methods {
            let what = format!("{method} {path}");
            let response = http.request(method.clone(), dev.url(path)).bearer_auth(&dev.api_key).send().await.unwrap();
            let allow = response.headers().get(reqwest::header::ALLOW).map(|v| v.to_str().unwrap().to_owned());
            expect_problem(response, 405, "method-not-allowed", &what).await;
            let allow = allow.unwrap_or_else(|| panic!("{what}: no Allow header"));
            assert!(allow.split(',').any(|m| m.trim() == *allowed), "{what}: Allow: {allow}");
        }
    }
    let unknown = http.get(dev.url("/v1/no-such-route")).send().await.unwrap();
    expect_problem(unknown, 404, "not-found", "an unknown path").await;

    // Bodies the publish routes cannot take.
    let publish = dev.url(&format!("/v1/apps/{app}/channels/chat:t/messages"));
    let batch = dev.url(&format!("/v1/apps/{app}/messages"));
    let bodies: [(&str, &str, &str, u16, &str); 4] = [
        ("text/plain", "{\"data\":1}", "not declared JSON", 415, "unsupported-media-type"),
        ("application/json", "{\"data\":", "malformed JSON", 400, "bad-request"),
        ("application/json", "{\"data\":1,\"idempotency_key\":7}", "the wrong shape", 400, "bad-request"),
        ("application/json", "[]", "not an object", 400, "bad-request"),
    ];
    for (url, route) in [(&publish, "publish"), (&batch, "batch")] {
        for (kind, body, what, status, slug) in bodies {
            let response = http
                .post(url.as_str())
                .bearer_auth(&dev.api_key)
                .header(reqwest::header::CONTENT_TYPE, kind)
                .body(body)
                .send()
                .await
                .unwrap();
            expect_problem(response, status, slug, &format!("{route}: {what}")).await;
        }
    }

    // `bearer`, `BEARER`: the scheme is case-insensitive on REST and on SSE.
    for scheme in ["bearer", "BEARER"] {
        let (status, body) = send(
            http.post(&publish)
                .header(reqwest::header::AUTHORIZATION, format!("{scheme} {}", dev.api_key))
                .json(&json!({"data": "lowercase"})),
        )
        .await;
        assert_eq!(status, 201, "REST with {scheme}: {body}");
    }
    let token = dev.token("lower", json!({"chat:*": ["subscribe"]})).await;
    let sse = http
        .get(dev.url("/v1/sse?channels=chat:t"))
        .header(reqwest::header::AUTHORIZATION, format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200, "SSE with bearer");
}

/// `levels` nested arrays around a number: `[[1]]` for 2.
fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

/// Defect 11: 30,000 levels of nesting were accepted and stored (a channel's history then broke
/// every subscriber with a recursive parser); a channel's presence data could reach 1,000 ×
/// 64 KiB; parseable but invalid commands never counted toward the bad-frame close. Now data
/// nests at most 64 deep on every input, a channel's presence data totals at most 1 MiB (each
/// member its share), and invalid commands close the connection like malformed ones. The depths
/// are fixed, so the test is the same on every run.
#[tokio::test]
async fn deep_json_big_presence_and_invalid_command_floods_are_refused() {
    let dev = Dev::start(&[], None);
    let http = reqwest::Client::new();
    let publish = dev.url(&format!("/v1/apps/{}/channels/chat:deep/messages", dev.app_id));
    let batch = dev.url(&format!("/v1/apps/{}/messages", dev.app_id));
    let body = |levels: usize| format!("{{\"data\":{}}}", nested(levels));
    let post = |url: &str, body: String| {
        http.post(url).bearer_auth(&dev.api_key).header(reqwest::header::CONTENT_TYPE, "application/json").body(body)
    };
    // REST: 64 levels are stored, 65 and 30,000 are refused before anything is stored.
    let (status, stored) = send(post(&publish, body(64))).await;
    assert_eq!(status, 201, "{stored}");
    for levels in [65, 30_000] {
        let response = post(&publish, body(levels)).send().await.unwrap();
        let problem = expect_problem(response, 400, "bad-request", &format!("publish {levels} deep")).await;
        assert!(problem["detail"].as_str().unwrap().contains("64"), "{problem}");
        let messages = format!("{{\"messages\":[{{\"channel\":\"chat:deep\",\"data\":{}}}]}}", nested(levels));
        expect_problem(post(&batch, messages).send().await.unwrap(), 400, "bad-request", "batch").await;
    }
    let history = dev.url(&format!("/v1/apps/{}/channels/chat:deep/history", dev.app_id));
    let (status, page) = send(http.get(history).bearer_auth(&dev.api_key)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["publications"].as_array().map(Vec::len), Some(1), "only the 64-deep message is stored");

    // WebSocket: publish and presence data alike.
    let token = dev.token("deep", json!({"chat:*": ["subscribe", "publish", "presence"]})).await;
    let mut ws = common::connect(&dev.proc.ws_url(), &token).await;
    let deep: Value = serde_json::from_str(&nested(65)).unwrap();
    let refused = common::request(&mut ws, 1, json!({"type": "publish", "channel": "chat:deep", "data": deep})).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("bad_request")), "{refused}");
    let refused =
        common::request(&mut ws, 2, json!({"type": "presence.enter", "channel": "chat:deep", "data": deep})).await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    // 30,000 levels in a frame: refused, never stored.
    let frame = format!("{{\"type\":\"publish\",\"id\":3,\"channel\":\"chat:deep\",\"data\":{}}}", nested(30_000));
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame)).await.unwrap();
    let refused = common::next_matching(&mut ws, |f| f["id"] == 3).await;
    assert_eq!(refused["code"], "bad_request", "{refused}");

    // Presence: each member's share of the channel's 1 MiB (1 KiB at 1,000 members).
    let share = "p".repeat(1000);
    let ok =
        common::request(&mut ws, 4, json!({"type": "presence.enter", "channel": "chat:room", "data": share})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let big = "p".repeat(2000);
    let refused =
        common::request(&mut ws, 5, json!({"type": "presence.update", "channel": "chat:room", "data": big})).await;
    assert_eq!(refused["code"], "payload_too_large", "{refused}");

    // A flood of parseable but invalid commands ends the connection like malformed frames do.
    let mut closed = None;
    for id in 10..30u64 {
        let bad = json!({"type": "subscribe", "id": id, "channel": "no spaces allowed"});
        if ws.send(tokio_tungstenite::tungstenite::Message::text(bad.to_string())).await.is_err() {
            break;
        }
    }
    use futures::StreamExt;
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(frame) = message {
                closed = frame.map(|f| u16::from(f.code));
                break;
            }
        }
    })
    .await
    .expect("the connection is closed");
    assert_eq!(closed, Some(4000), "too many bad frames");
}
