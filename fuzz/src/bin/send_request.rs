//! A `Send`'s bytes as a caller may put them on the wire.
// Each target uses half of the shared checks.
#[allow(dead_code)]
#[path = "../../../tests/gateway/support/invariants.rs"]
mod invariants;

fn main() {
    afl::fuzz!(|wire: &[u8]| invariants::send_request_wire(wire));
}
