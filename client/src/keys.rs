//! Key and policy management, and `whoami` (docs/SECURITY.md).

use cmq_protocol::{
    CreateKey, DeleteKey, GetPolicy, KeySecret, KeySummary, ListKeys, Request, Response, RotateKey, SetPolicy, WhoAmI,
    WhoAmIOk,
};

use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// Creates a key with `policy` (a CAM policy document; "" allows
    /// nothing). The SecretKey is in the answer and nowhere else: keep it.
    pub fn create_key(&mut self, name: &str, policy: &str) -> Result<KeySecret, ClientError> {
        let req = Request::CreateKey(CreateKey { name: name.to_owned(), policy: policy.to_owned() });
        expect!(self.call(&req)?, CreateKey)
    }

    /// Every key the caller may list (never a SecretKey), in name order.
    pub fn list_keys(&mut self) -> Result<Vec<KeySummary>, ClientError> {
        expect!(self.call(&Request::ListKeys(ListKeys {}))?, ListKeys).map(|ok| ok.keys)
    }

    /// Deletes a key (its open connections are closed), or with
    /// `old_secret_only` only the older SecretKey of a rotated key.
    pub fn delete_key(&mut self, name: &str, old_secret_only: bool) -> Result<(), ClientError> {
        let req = Request::DeleteKey(DeleteKey { name: name.to_owned(), old_secret_only });
        expect!(self.call(&req)?, DeleteKey).map(drop)
    }

    /// A second SecretKey for `name`, valid alongside the first until that is deleted.
    pub fn rotate_key(&mut self, name: &str) -> Result<KeySecret, ClientError> {
        expect!(self.call(&Request::RotateKey(RotateKey { name: name.to_owned() }))?, RotateKey)
    }

    /// Replaces a key's policy; its open connections follow within a second.
    pub fn set_policy(&mut self, name: &str, policy: &str) -> Result<(), ClientError> {
        let req = Request::SetPolicy(SetPolicy { name: name.to_owned(), policy: policy.to_owned() });
        expect!(self.call(&req)?, SetPolicy).map(drop)
    }

    pub fn get_policy(&mut self, name: &str) -> Result<String, ClientError> {
        expect!(self.call(&Request::GetPolicy(GetPolicy { name: name.to_owned() }))?, GetPolicy).map(|ok| ok.policy)
    }

    /// The key this client authenticated as, and the broker's mode.
    pub fn who_am_i(&mut self) -> Result<WhoAmIOk, ClientError> {
        expect!(self.call(&Request::WhoAmI(WhoAmI {}))?, WhoAmI)
    }
}
