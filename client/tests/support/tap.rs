//! A transparent TCP proxy in front of the real cmqd that notes the opcode
//! of every request frame passing through, for tests that must see what the
//! client sent (16 messages a request, one peek request per 100 messages,
//! nothing sent at all) while the broker itself answers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::BytesMut;
use cmq_protocol::{frame, Opcode};

pub struct Tap {
    pub addr: SocketAddr,
    opcodes: Arc<Mutex<Vec<u16>>>,
    /// Client connections not yet closed by the client.
    open: Arc<AtomicUsize>,
}

impl Tap {
    /// Listens on 127.0.0.1:0 and relays every connection to `upstream`.
    /// The acceptor thread lives as long as the test process: a test's
    /// connections end with the test.
    pub fn start(upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tap");
        let addr = listener.local_addr().expect("tap addr");
        let opcodes = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (seen, live) = (opcodes.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (seen, live) = (seen.clone(), live.clone());
                live.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    relay(client, upstream, &seen);
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Tap { addr, opcodes, open }
    }

    /// Client connections open now (a connection counts until its client
    /// closes it, which a broker cannot show from outside).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Request frames with this opcode seen so far, on all connections.
    pub fn count(&self, op: Opcode) -> usize {
        self.opcodes.lock().expect("lock").iter().filter(|o| **o == op as u16).count()
    }
}

fn relay(client: TcpStream, upstream: SocketAddr, seen: &Mutex<Vec<u16>>) {
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else { return };
    let (mut server_r, mut client_w) = (server, client);
    // Answers flow back untouched.
    let back = thread::spawn(move || {
        let _ = io::copy(&mut server_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match client_r.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(total)) = frame::check(&buf) {
            let (header, _) = frame::split(&mut buf, total);
            seen.lock().expect("lock").push(header.opcode);
        }
        if server_w.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = server_w.shutdown(Shutdown::Write);
    let _ = back.join();
}
