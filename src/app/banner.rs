//! What a person needs to start using the gateway, printed once it is
//! built: where it listens, how to try it, how callers get in.

use std::net::SocketAddr;

use crate::app::Application;
use crate::sandbox;

/// What a person needs to start using the gateway, on stdout.
pub fn announce(app: &Application) {
    let local = app.grpc_addr();
    let target = reachable(local).replace("127.0.0.1", "localhost");
    match app.sandbox() {
        Some(s) => {
            tracing::warn!(
                "no Instagram credentials: sending to the built-in sandbox, not to Instagram"
            );
            println!(
                "sandbox Graph API at {} (received messages: {})",
                s.base_url,
                s.messages_log_url()
            );
            println!(
                "it plays two accounts, shop ({}) and support ({}); try a send as each:",
                sandbox::ACCOUNT_ID,
                sandbox::SUPPORT_ACCOUNT_ID
            );
            for (_, name) in sandbox::ACCOUNTS {
                println!(
                    "  grpcurl -plaintext -d '{{\"account_id\":\"{name}\",\"recipient_id\":\"{}\",\"text\":\"Hello from my app\"}}' {target} messenger.v1.Messenger/Send",
                    sandbox::DEMO_RECIPIENT
                );
            }
            println!(
                "play the Instagram user: curl -s -X POST {} -d '{{\"account\":\"support\",\"sender_id\":\"{}\",\"text\":\"Hi!\"}}'",
                s.inbound_url(),
                sandbox::DEMO_RECIPIENT
            );
            println!(
                "watch inbound events: grpcurl -plaintext -d '{{}}' {target} messenger.v1.Messenger/Subscribe"
            );
        }
        None => {
            for path in app.accounts().entries() {
                let account = path.account();
                match &path.name {
                    Some(name) => println!(
                        "sending as account {} ({name}) via {}",
                        path.id, account.base_url
                    ),
                    None => println!("sending as account {} via {}", path.id, account.base_url),
                }
            }
        }
    }
    if let Some(url) = app.webhook_url() {
        println!("webhooks at {url}");
    }
    if let Some(admin) = app.admin_addr() {
        println!(
            "admin at http://{} (/metrics, /livez, /readyz)",
            reachable(admin)
        );
    }
    println!("callers: {}", app.mode());
    // Last, so a script that waits for it knows the banner is complete.
    println!("messenger-gateway listening on {local} (gRPC)");
    tracing::info!(%local, accounts = app.accounts().len(), "ready");
}

/// An address a local client can dial: the unspecified address is not one.
pub fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}
