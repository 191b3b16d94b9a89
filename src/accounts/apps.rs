//! The Meta apps whose webhooks the gateway takes: the main app's
//! secrets come from the variables, further apps from the accounts file.

/// The app's webhook secrets. Never logged.
#[derive(Clone)]
pub struct WebhookSecrets {
    /// `INSTAGRAM_APP_SECRET`: the HMAC key Meta signs deliveries with.
    pub app_secret: String,
    /// `INSTAGRAM_VERIFY_TOKEN`: what Meta echoes in the handshake.
    pub verify_token: String,
}

impl WebhookSecrets {
    /// Fresh random secrets, for the sandbox: it never signs with a real one.
    pub fn random() -> Self {
        Self {
            app_secret: format!("sandbox-secret-{:032x}", rand::random::<u128>()),
            verify_token: format!("sandbox-verify-{:016x}", rand::random::<u64>()),
        }
    }
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecrets(..)")
    }
}

/// A Meta app of the accounts file: its name (the last part of its
/// webhook path) and secrets.
#[derive(Debug, Clone)]
pub struct WebhookApp {
    pub name: String,
    pub secrets: WebhookSecrets,
}
