//! Harness for integration tests: runs the real `cmqd` binary on an
//! ephemeral port with a temporary data directory, and a raw protocol
//! connection for tests that need to send bytes no client library would.

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod console;
pub mod http;
pub mod http_sink;
pub mod ledger;
pub mod load;
pub mod node_conn;
pub mod ops;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod python;
pub mod queue_model;
pub mod raw;
pub mod tls;
pub mod wal_files;
pub mod workload;

pub use auth::AdminBroker;
pub use broker::Broker;
pub use cluster::{Cluster, ClusterSpec};
pub use http_sink::{refused_url, HttpRequest, HttpSink};
pub use ledger::{Ledger, Report};
pub use load::{drain, Load, LoadSpec, Router};
pub use node_conn::NodeConn;
pub use ops::{bodies, name_on_shard, names_on_shard, raw_frame, request_frame};
pub use ports::{reserve_addr, reserve_port};
pub use process::{memory, raise_fd_limit, Memory, MemoryWatch};
pub use queue_model::{backlog, dead_letter_after, now_ms, poll_until, Frame, PushConn};
pub use raw::{RawConn, Reply};
pub use workload::Workload;
