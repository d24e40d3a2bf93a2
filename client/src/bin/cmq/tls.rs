//! `--tls`, `--ca-file`, `--tls-cert/--tls-key`: the broker's TLS port
//! (`cmqd --tls-cert`), with a client certificate where it asks for one.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use cmq_client::TlsOptions;

/// Global flags for connecting over TLS.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Connect over TLS 1.3 (the broker runs with --tls-cert); the certificate is checked against
    /// --ca-file, or Mozilla's root CAs without it
    #[arg(long, global = true, display_order = 1002)]
    pub tls: bool,
    /// PEM file of the CA(s) to trust for the broker's certificate (implies --tls)
    #[arg(long, global = true, value_name = "FILE", display_order = 1002)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for a broker that requires one (--tls-client-ca); needs --tls-key
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key", display_order = 1002)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert", display_order = 1002)]
    pub tls_key: Option<PathBuf>,
    /// Check the broker's certificate for this name instead of the host of --server
    #[arg(long, global = true, value_name = "NAME", display_order = 1002)]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS settings (None: plaintext).
    pub fn resolve(&self) -> Result<Option<TlsOptions>> {
        let wanted = self.tls || self.ca_file.is_some() || self.tls_cert.is_some() || self.tls_server_name.is_some();
        if !wanted {
            return Ok(None);
        }
        let client_cert = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let mut options = TlsOptions::new(self.ca_file.as_deref(), client_cert)?;
        if let Some(name) = &self.tls_server_name {
            options = options.with_server_name(name)?;
        }
        Ok(Some(options))
    }
}
