//! The interceptor in front of every call: who is calling.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::edge::auth::Keys;
use crate::edge::net::ConnInfo;
use crate::refusals;

/// Finds the caller's key from `authorization: Bearer …` or a client
/// certificate, and hands it to the handler; refuses unknown callers.
#[derive(Clone)]
pub struct Authenticate(pub(super) Arc<Keys>);

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let conn = request.extensions().get::<ConnInfo>();
        let identities = conn.map(|c| c.identities.0.clone()).unwrap_or_default();
        match self.0.authenticate(bearer, &identities) {
            Ok(caller) => {
                // Written once: a store on every call would bounce the
                // cache line between the worker threads.
                if let Some(c) = conn.filter(|c| !c.authenticated.load(Relaxed)) {
                    c.authenticated.store(true, Relaxed);
                }
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(e) => {
                refusals::note("call without a valid API key");
                Err(e.into())
            }
        }
    }
}
