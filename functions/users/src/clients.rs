//! Service clients: the services that may obtain short-lived service tokens, with
//! their secrets (the `service_clients` secret variable, `id=secret,id=secret`).

use sha2::{Digest, Sha256};

#[derive(Debug, Default)]
pub struct ServiceClients {
    /// (client id, SHA-256 of its secret)
    clients: Vec<(String, [u8; 32])>,
}

/// Secrets shorter than this are refused at configuration time.
pub const MIN_SECRET_LEN: usize = 16;

impl ServiceClients {
    pub fn parse(config: &str) -> Result<Self, String> {
        let mut clients = Vec::new();
        for entry in config.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, secret) = entry
                .split_once('=')
                .ok_or_else(|| format!("service client `{entry}` is not `id=secret`"))?;
            let id = id.trim();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("service client id `{id}` must be letters, digits, - or _"));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "service client `{id}`: its secret must be at least {MIN_SECRET_LEN} characters"
                ));
            }
            clients.push((id.to_string(), Sha256::digest(secret.as_bytes()).into()));
        }
        Ok(Self { clients })
    }

    /// Whether `secret` is `id`'s. Compares fixed-length digests in constant time, so
    /// the time taken says nothing about how much of the secret matched.
    pub fn authenticate(&self, id: &str, secret: &str) -> bool {
        let offered: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.clients
            .iter()
            .any(|(client, expected)| client == id && crate::secrets::same_digest(expected, &offered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_authenticate_only_with_their_own_secret() {
        let clients = ServiceClients::parse(" orders=0123456789abcdef , notifications=fedcba9876543210").unwrap();
        assert!(clients.authenticate("orders", "0123456789abcdef"));
        assert!(clients.authenticate("notifications", "fedcba9876543210"));
        assert!(
            !clients.authenticate("orders", "fedcba9876543210"),
            "another client's secret"
        );
        assert!(!clients.authenticate("orders", "0123456789abcde"));
        assert!(!clients.authenticate("payments", "0123456789abcdef"), "unknown client");
        assert!(ServiceClients::parse("").unwrap().clients.is_empty());
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(ServiceClients::parse("orders").unwrap_err().contains("id=secret"));
        assert!(
            ServiceClients::parse("orders=short")
                .unwrap_err()
                .contains("at least 16")
        );
        assert!(
            ServiceClients::parse("or ders=0123456789abcdef")
                .unwrap_err()
                .contains("letters")
        );
    }
}
