//! A CMQ API long poll whose HTTP client goes away is released, as a closed
//! binary connection's long poll is: the message that arrives afterwards
//! goes to a client still waiting, not to the dead request (where it would
//! have stayed invisible until its visibility timeout).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cmq_client::{Client, QueueAttributesUpdate};
use cmq_integration_tests::http::Metrics;
use cmq_integration_tests::Broker;

const WAITING: &str = "cmq_http_requests_waiting";

/// How long the test waits for something it expects soon.
const DEADLINE: Duration = Duration::from_secs(10);

/// Sends an anonymous `ReceiveMessage` long poll (`--auth auto` on loopback
/// with no keys serves it unsigned) and leaves it waiting.
fn park_long_poll(http: SocketAddr, queue: &str, wait_s: u32) -> TcpStream {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let body = format!(
        "Action=ReceiveMessage&queueName={queue}&pollingWaitSeconds={wait_s}&SecretId=AKIDany&Timestamp={t}&Nonce={}&Signature=x",
        t ^ u64::from(wait_s)
    );
    let mut s = TcpStream::connect(http).expect("connect");
    let head = format!("POST /v2/index.php HTTP/1.1\r\nHost: {http}\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).expect("send");
    s
}

fn wait_for_waiting(http: SocketAddr, want: f64) {
    let start = Instant::now();
    loop {
        let n = Metrics::scrape(http).value(WAITING, &[]);
        if n == want {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{WAITING} stayed {n}, expected {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_abandoned_long_poll_does_not_take_the_next_message() {
    let b = Broker::start(&["--shards", "1"]);
    let http = b.http_addr.expect("HTTP port");
    let mut c = Client::connect(b.addr).expect("connect");
    let attrs = QueueAttributesUpdate { visibility_timeout: Some(600), ..Default::default() };
    c.create_queue("lp", &attrs).expect("create");

    let gone = park_long_poll(http, "lp", 25);
    wait_for_waiting(http, 1.0);
    drop(gone);
    // The gateway tells the shard before it forgets the request, so once the
    // gauge falls the shard's inbox already holds the release.
    wait_for_waiting(http, 0.0);

    let id = c.send("lp", &b"after the client left"[..], 0).expect("send");
    let got = c.receive("lp", Some(5)).expect("receive").expect("the message is there for a live client");
    assert_eq!(got.msg_id, id);
    assert_eq!(got.dequeue_count, 1, "nobody received it before");
    let info = c.queue_info("lp").expect("info");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (0, 1), "only our receive holds it");
}
