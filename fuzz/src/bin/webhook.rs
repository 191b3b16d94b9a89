//! A webhook body, as Meta (or anyone who holds the secret) might send it.
// Each target uses half of the shared checks.
#[allow(dead_code)]
#[path = "../../../tests/gateway/support/invariants.rs"]
mod invariants;

fn main() {
    afl::fuzz!(|body: &[u8]| invariants::webhook_body(body));
}
