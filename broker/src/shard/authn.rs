//! Authentication and permission checks on the shard loop
//! (docs/SECURITY.md): the challenge-response before the handshake, the
//! per-request permission check (a cached decision), filtered lists,
//! publishing shard 0's keys to every shard, and closing connections whose
//! key went away.

use std::sync::Arc;

use bytes::Bytes;
use cmq_protocol::auth::{
    self as wire, AUTH_MAC_BYTES, AUTH_METHOD_V1, AUTH_NONCE_BYTES, AUTH_TIMESTAMP_SKEW_MS_MAX, CLIENT_MAC_LABEL,
    SERVER_MAC_LABEL,
};
use cmq_protocol::frame::FrameHeader;
use cmq_protocol::*;

use super::mailbox::{ConnRef, ReplyTo};
use super::{reply, Shard};
use crate::auth::actions::{need, Action, Need, Resource};
use crate::auth::session::Session;
use crate::auth::table::{KeyTable, Principal};

/// Why an authenticated connection is closed when the key table changes.
const KEY_DELETED: &str = "this connection's key was deleted";
const SECRET_RETIRED: &str = "the SecretKey this connection authenticated with was retired (key rotation)";

/// Whom a list is filtered for: None = everything is visible.
pub type Viewer = Option<Arc<Principal>>;

/// Whether `viewer` may see `name` under `action` (a resource path prefix `kind/`).
pub fn visible(viewer: &Viewer, action: Action, kind: &str, name: &str) -> bool {
    viewer.as_ref().is_none_or(|p| p.policy.allows(action.name(), &format!("{kind}/{name}")))
}

impl Shard {
    /// AuthChallenge and Authenticate, which come before the handshake.
    /// Returns false if the frame is not one of them.
    pub(super) fn pre_handshake(&mut self, me: ConnRef, header: FrameHeader, payload: Bytes, now: u64) -> bool {
        let op = header.opcode;
        if op != Opcode::AuthChallenge as u16 && op != Opcode::Authenticate as u16 {
            return false;
        }
        let id = header.request_id;
        match Request::decode(op, payload) {
            Ok(Request::AuthChallenge(_)) => self.challenge(me, id),
            Ok(Request::Authenticate(a)) => self.authenticate(me, id, a, now),
            Ok(_) | Err(_) => self.auth_failed(me, op, id, "malformed authentication frame"),
        }
        true
    }

    fn peer_ip(&self, me: ConnRef) -> Option<std::net::IpAddr> {
        self.clients.conns.get(me.token)?.stream.peer_addr().ok().map(|a| a.ip())
    }

    fn challenge(&mut self, me: ConnRef, id: u64) {
        let op = Opcode::AuthChallenge as u16;
        let Some(conn) = self.clients.conns.get(me.token) else { return };
        if conn.auth_challenged {
            return self.auth_failed(me, op, id, "one AuthChallenge per connection");
        }
        if let Some(ip) = self.peer_ip(me) {
            let backoff = &self.shared.auth.backoff;
            let wait = backoff.wait_ms(ip, backoff.now_ms());
            if wait > 0 {
                // Refused unchecked, without lengthening the wait: a client
                // retrying on a timer gets in once the wait is over.
                self.shared.auth.count_failure();
                let msg = crate::auth::attempts::must_wait_message(wait);
                return self.fail_conn_answering(me.token, op, id, ErrorCode::AUTH_FAILED, &msg);
            }
        }
        let nonce = match crate::auth::secrets::nonce() {
            Ok(n) => n,
            Err(e) => {
                log::error!("shard {}: the OS random number generator failed: {e}", self.id);
                return self.fail_conn_answering(me.token, op, id, ErrorCode::INTERNAL, "no random nonce available");
            }
        };
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return };
        conn.auth_challenged = true;
        conn.auth_nonce = Some(Box::new(nonce));
        let resp = Response::AuthChallenge(AuthChallengeOk { server_nonce: Bytes::copy_from_slice(&nonce) });
        reply::ok(&mut conn.out, id, &resp);
        conn.release_all_now();
        self.write_conn(me.token);
    }

    fn authenticate(&mut self, me: ConnRef, id: u64, a: Authenticate, now: u64) {
        let op = Opcode::Authenticate as u16;
        // The nonce is used up by this attempt, whatever its outcome: a
        // second Authenticate on the connection (a replay) finds none.
        let Some(server_nonce) = self.clients.conns.get_mut(me.token).and_then(|c| c.auth_nonce.take()) else {
            return self.auth_failed(me, op, id, "Authenticate without a fresh AuthChallenge");
        };
        if a.client_nonce.len() != AUTH_NONCE_BYTES || a.mac.len() != AUTH_MAC_BYTES {
            return self.auth_failed(me, op, id, "client nonce and MAC must be 32 bytes each");
        }
        if now.abs_diff(a.timestamp_ms) > AUTH_TIMESTAMP_SKEW_MS_MAX {
            let msg = format!("timestamp is more than {} s from the broker's clock", AUTH_TIMESTAMP_SKEW_MS_MAX / 1000);
            return self.auth_failed(me, op, id, &msg);
        }
        let table = self.shared.auth.keys.table();
        let version = self.shared.auth.keys.version();
        let binding = self.clients.conns.get(me.token).and_then(|c| c.tls.as_ref()?.channel_binding());
        let binding: &[u8] = binding.as_ref().map_or(&[], |b| &b[..]);
        let t = wire::transcript(&server_nonce[..], &a.client_nonce, &a.secret_id, a.timestamp_ms, binding);
        // Unknown SecretId and wrong SecretKey get the same answer.
        let Some((principal, secret)) = table.by_id.get(&a.secret_id).and_then(|p| {
            let s: &Vec<u8> = p.secrets.iter().find(|s| wire::verify(s, CLIENT_MAC_LABEL, &t, &a.mac))?;
            Some((p.clone(), s.clone()))
        }) else {
            return self.auth_failed(me, op, id, "unknown SecretId or wrong signature");
        };
        if let Some(ip) = self.peer_ip(me) {
            self.shared.auth.backoff.succeeded(ip);
        }
        let server_mac = Bytes::copy_from_slice(&wire::mac(&secret, SERVER_MAC_LABEL, &t));
        let resp = Response::Authenticate(AuthenticateOk { key_name: principal.name.clone(), server_mac });
        let limit = self.shared.cfg.key_connections_max;
        let Some(slot) = self.shared.auth.usage.open(&principal.secret_id, limit) else {
            let msg =
                format!("key {:?} has its limit of {limit} connections open (--key-connections-max)", principal.name);
            return self.fail_conn_answering(me.token, op, id, ErrorCode::TOO_MANY_KEY_CONNECTIONS, &msg);
        };
        let mut session = Session::new(principal, version, &secret);
        session.slot = Some(slot);
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return };
        conn.session = Some(Box::new(session));
        reply::ok(&mut conn.out, id, &resp);
        conn.release_all_now();
        self.write_conn(me.token);
    }

    /// Refuses an attempt: logged with the peer address (never a secret),
    /// counted, the address slowed down, the connection closed.
    pub(super) fn auth_failed(&mut self, me: ConnRef, op: u16, id: u64, why: &str) {
        self.refuse(me, op, id, why, true)
    }

    /// `slow_down`: the attempt could have been a guess (a MAC or a nonce
    /// was involved); a plain anonymous handshake refused is not, and does
    /// not hold up the address's next, authenticated, attempt.
    fn refuse(&mut self, me: ConnRef, op: u16, id: u64, why: &str, slow_down: bool) {
        self.shared.auth.count_failure();
        let ip = self.peer_ip(me);
        let wait = match ip {
            Some(ip) if slow_down => self.shared.auth.backoff.failed(ip, self.shared.auth.backoff.now_ms()),
            _ => 0,
        };
        let who = ip.map_or_else(|| "unknown address".to_owned(), |ip| ip.to_string());
        log::warn!("authentication failed from {who}: {why} (next attempt from there in {wait} ms)");
        // It answers a frame, so it carries that frame's opcode (PROTOCOL.md §3).
        self.fail_conn_answering(me.token, op, id, ErrorCode::AUTH_FAILED, why);
    }

    /// Whether the handshake may go on given how the connection
    /// authenticated (`auth_method`); refuses it otherwise.
    pub(super) fn admit(&mut self, me: ConnRef, id: u64, auth_method: &str) -> bool {
        let op = Opcode::Handshake as u16;
        let Some(conn) = self.clients.conns.get(me.token) else { return false };
        let authenticated = conn.session.is_some();
        let refusal = match auth_method {
            AUTH_METHOD_V1 if authenticated => None,
            AUTH_METHOD_V1 => Some("auth method cmq-auth-v1 needs AuthChallenge and Authenticate first".to_owned()),
            "" if authenticated => None,
            "" if self.admits_anonymous() => None,
            "" => Some(
                "this broker requires authentication: connect with a SecretId and SecretKey (--credentials)".to_owned(),
            ),
            other => Some(format!("unknown auth method {other:?} (this broker speaks {AUTH_METHOD_V1:?})")),
        };
        match refusal {
            None => true,
            Some(why) => {
                self.refuse(me, op, id, &why, !auth_method.is_empty());
                false
            }
        }
    }

    fn admits_anonymous(&self) -> bool {
        self.shared.cfg.auth.admits_anonymous(!self.shared.auth.keys.table().is_empty())
    }

    /// The permission check before a request is routed. Returns false
    /// (having answered ACCESS_DENIED, or closed a connection whose key is
    /// gone) when the request must not run.
    pub(super) fn permitted(&mut self, me: ConnRef, header: &FrameHeader, request: &Request) -> bool {
        if !self.within_key_rate(me, header) {
            return false;
        }
        if !self.shared.cfg.auth.enforces() {
            return true;
        }
        let version = self.shared.auth.keys.version();
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return false };
        let Some(session) = conn.session.as_mut() else { return true };
        if session.version != version {
            let table = self.shared.auth.keys.table();
            match table.by_id.get(&session.principal.secret_id) {
                Some(p) if session.secret_still_valid(p) => session.refresh(p.clone(), version),
                found => {
                    let msg = if found.is_some() { SECRET_RETIRED } else { KEY_DELETED };
                    self.fail_conn_answering(me.token, header.opcode, header.request_id, ErrorCode::AUTH_FAILED, msg);
                    return false;
                }
            }
        }
        let Need::Permission(action, resource) = need(request) else { return true };
        if session.allows(action, resource) {
            return true;
        }
        let msg = format!("key {:?} is not allowed {} on {}", session.principal.name, action.name(), resource.path());
        reply::err(&mut conn.out, header.opcode, header.request_id, ErrorCode::ACCESS_DENIED, &msg);
        self.touch(me);
        false
    }

    /// `--key-requests-per-second`: counts the request against its key's
    /// window; one past the limit is answered REQUEST_RATE_EXCEEDED (the
    /// connection stays open). Anonymous connections have no key to count.
    fn within_key_rate(&mut self, me: ConnRef, header: &FrameHeader) -> bool {
        let per_second = self.shared.cfg.key_requests_per_second;
        if per_second == 0 {
            return true;
        }
        let now_ms = self.limits.now_ms;
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return false };
        let Some(session) = conn.session.as_ref() else { return true };
        if session.slot.as_ref().is_none_or(|s| s.usage.admit(now_ms, per_second)) {
            return true;
        }
        let msg = format!(
            "key {:?} is over its limit of {per_second} requests per second (--key-requests-per-second); retry later",
            session.principal.name
        );
        reply::err(&mut conn.out, header.opcode, header.request_id, ErrorCode::REQUEST_RATE_EXCEEDED, &msg);
        self.touch(me);
        false
    }

    /// A SubscriptionInfo answer for a local connection whose key may not
    /// see push secrets on its topic, with the secret blanked (None: send
    /// `resp` as it is). Cheap for every other answer: one variant test.
    pub(super) fn redacted(&mut self, to: ReplyTo, resp: &Response) -> Option<Response> {
        let info = match resp {
            Response::GetSubscriptionAttributes(i) | Response::SetSubscriptionAttributes(i) => i,
            _ => return None,
        };
        if info.push_secret.is_empty() || self.may_see_secret(to.conn, &info.topic) {
            return None;
        }
        let blank = SubscriptionInfo { push_secret: String::new(), ..info.clone() };
        Some(match resp {
            Response::GetSubscriptionAttributes(_) => Response::GetSubscriptionAttributes(blank),
            _ => Response::SetSubscriptionAttributes(blank),
        })
    }

    /// `redacted` for an answer another shard encoded (one frame).
    pub(super) fn redacted_frame(&mut self, c: ConnRef, frame: &[u8]) -> Option<Vec<u8>> {
        const SUB_OPS: [u16; 2] = [Opcode::GetSubscriptionAttributes as u16, Opcode::SetSubscriptionAttributes as u16];
        let header = frame.get(..cmq_protocol::frame::HEADER_BYTES)?;
        let opcode = u16::from_le_bytes([header[4], header[5]]);
        if !SUB_OPS.contains(&opcode) || header[6] & cmq_protocol::frame::FLAG_ERROR != 0 {
            return None;
        }
        let request_id = u64::from_le_bytes(header[8..16].try_into().ok()?);
        let payload = Bytes::copy_from_slice(&frame[cmq_protocol::frame::HEADER_BYTES..]);
        let resp = Response::decode(opcode, payload).ok()?;
        let to = ReplyTo { shard: self.id, conn: c };
        let blank = self.redacted(to, &resp)?;
        let mut out = Vec::with_capacity(frame.len());
        blank.encode_frame(request_id, &mut out);
        Some(out)
    }

    fn may_see_secret(&mut self, c: ConnRef, topic: &str) -> bool {
        if !self.shared.cfg.auth.enforces() {
            return true;
        }
        let Some(conn) = self.clients.conns.get_mut(c.token).filter(|x| x.gen == c.gen) else { return true };
        conn.session.as_mut().is_none_or(|s| s.allows(Action::GET_SUBSCRIPTION_SECRET, Resource::Topic(topic)))
    }

    /// The key lists are filtered for (None: sees everything).
    pub(super) fn viewer(&self, to: ReplyTo) -> Viewer {
        if to.shard == super::external::EXTERNAL_SHARD {
            return self.external_viewer(to);
        }
        if to.shard != self.id || !self.shared.cfg.auth.enforces() {
            return None;
        }
        let conn = self.clients.conns.get(to.conn.token).filter(|c| c.gen == to.conn.gen)?;
        conn.session.as_ref().map(|s| s.principal.clone())
    }

    pub(super) fn who_am_i(&self, to: ReplyTo) -> WhoAmIOk {
        let session =
            self.clients.conns.get(to.conn.token).filter(|c| c.gen == to.conn.gen).and_then(|c| c.session.as_ref());
        let mode = self.shared.cfg.auth;
        let auth_mode = if mode == crate::auth::AuthMode::Auto {
            if self.admits_anonymous() {
                "anonymous"
            } else {
                "required"
            }
        } else {
            mode.name()
        };
        WhoAmIOk {
            key_name: session.map(|s| s.principal.name.clone()).unwrap_or_default(),
            secret_id: session.map(|s| s.principal.secret_id.clone()).unwrap_or_default(),
            auth_mode: auth_mode.to_owned(),
        }
    }

    /// ListKeys, answered from the published table (never a SecretKey).
    pub(super) fn list_keys(&self, to: ReplyTo) -> ListKeysOk {
        let viewer = self.viewer(to);
        let table = self.shared.auth.keys.table();
        let mut keys: Vec<KeySummary> = table
            .by_id
            .values()
            .filter(|p| visible(&viewer, Action::LIST_KEYS, "key", &p.name))
            .map(|p| KeySummary {
                name: p.name.clone(),
                secret_id: p.secret_id.clone(),
                secrets: p.secrets.len() as u8,
                created_ms: p.created_ms,
                modified_ms: p.modified_ms,
            })
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        ListKeysOk { keys }
    }

    /// Shard 0: publishes its keys when they changed, and wakes every shard
    /// so open connections follow within a turn.
    pub(super) fn publish_keys(&mut self) {
        if self.id != 0 || self.engine.keys().version() == self.keys.keys_published {
            return;
        }
        self.keys.keys_published = self.engine.keys().version();
        self.shared.auth.keys.publish(KeyTable::build(self.engine.keys().iter()));
        for (k, p) in self.shared.peers.iter().enumerate() {
            if k != usize::from(self.id) {
                p.wake();
            }
        }
    }

    /// Every shard, when the key table changed: closes connections whose key
    /// is gone or whose SecretKey a rotation retired (`key delete
    /// --old-secret`), and anonymous ones once anonymous clients are no
    /// longer served.
    pub(super) fn sweep_sessions(&mut self) {
        let version = self.shared.auth.keys.version();
        if version == self.keys.keys_swept {
            return;
        }
        self.keys.keys_swept = version;
        let table = self.shared.auth.keys.table();
        let anonymous_ok = self.shared.cfg.auth.admits_anonymous(!table.is_empty());
        let doomed: Vec<(usize, &'static str)> = self
            .clients
            .conns
            .iter()
            .filter(|(_, c)| c.handshaken && !c.closing)
            .filter_map(|(t, c)| match &c.session {
                Some(s) => match table.by_id.get(&s.principal.secret_id) {
                    None => Some((t, KEY_DELETED)),
                    Some(p) if !s.secret_still_valid(p) => Some((t, SECRET_RETIRED)),
                    Some(_) => None,
                },
                None if !anonymous_ok => Some((t, "authentication is now required (a key was created)")),
                _ => None,
            })
            .collect();
        for (token, why) in doomed {
            self.fail_conn(token, 0, ErrorCode::AUTH_FAILED, why);
        }
    }

    /// `--init-admin-key FILE` (shard 0, once it may write): creates the
    /// administrator key if there is none and writes it to FILE.
    pub(super) fn init_admin_key(&mut self, now: u64) {
        if self.id != 0 || !self.keys.admin_key_pending || !self.may_serve() {
            return;
        }
        self.keys.admin_key_pending = false;
        self.make_admin_key(now);
        self.shared.auth.admin_key_settled();
    }

    fn make_admin_key(&mut self, now: u64) {
        let Some(path) = self.shared.cfg.init_admin_key.clone() else { return };
        if !self.engine.keys().is_empty() {
            log::info!("--init-admin-key: the broker has keys already; {} left alone", path.display());
            return;
        }
        let created = crate::auth::secrets::new_key_pair().map_err(|e| e.to_string()).and_then(|(id, key)| {
            let r = CreateKey { name: "admin".into(), policy: crate::auth::policy::ADMIN_POLICY.into() };
            self.engine.create_key(&mut self.log, now, &r, id, key).map_err(|e| e.message)
        });
        match created.and_then(|k| {
            crate::auth::secrets::write_credentials(&path, &k.name, &k.secret_id, &k.secret_key)
                .map(|()| k.secret_id)
                .map_err(|e| format!("writing {}: {e}", path.display()))
        }) {
            Ok(secret_id) => eprintln!(
                "cmqd: created administrator key \"admin\" ({secret_id}); its SecretKey is in {} (mode 0600)",
                path.display()
            ),
            Err(e) => log::error!("--init-admin-key: {e}"),
        }
        self.publish_keys();
    }
}

/// Keys: publishing shard 0's, sweeping sessions whose key went away.
pub(super) struct KeySync {
    /// Shard 0: the key store version last published (`authn.rs`).
    pub(super) keys_published: u64,
    /// The key table version this shard last swept its connections for.
    pub(super) keys_swept: u64,
    /// Shard 0: `--init-admin-key` still to do.
    pub(super) admin_key_pending: bool,
}
