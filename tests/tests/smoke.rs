use bytes::Bytes;
use cmq_integration_tests::{Broker, RawConn};
use cmq_protocol::*;

#[test]
fn create_send_receive_delete() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.call(Request::CreateQueue(CreateQueue { queue: "q1".into(), attributes: Default::default() })).ok();
    c.call(Request::SendMessage(SendMessage {
        queue: "q1".into(),
        delay_seconds: 0,
        body: Bytes::from("hello"),
        ..Default::default()
    }))
    .ok();
    let Response::ReceiveMessage(m) =
        c.call(Request::ReceiveMessage(ReceiveMessage { queue: "q1".into(), polling_wait_seconds: None })).ok()
    else {
        panic!("wrong response type")
    };
    assert_eq!(&m.body[..], b"hello");
    c.call(Request::DeleteMessage(DeleteMessage { queue: "q1".into(), receipt_handle: m.receipt_handle })).ok();
    let Response::GetQueueAttributes(info) =
        c.call(Request::GetQueueAttributes(GetQueueAttributes { queue: "q1".into() })).ok()
    else {
        panic!("wrong response type")
    };
    assert_eq!(info.active_msg_num + info.inactive_msg_num + info.delay_msg_num, 0);
}
