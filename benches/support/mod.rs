//! What the benches share: knobs, medians, a process's CPU time, and a
//! fixed-answer Graph stand-in. Each bench uses some of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A numeric knob from the environment.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Process `pid`'s CPU time, user and system, as the scheduler counts it
/// to the nanosecond: `/proc/PID/stat`'s utime and stime are sampled at
/// each clock tick, a few per cent of noise over a round by themselves.
pub fn cpu_of(pid: u32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both pointers are to live locals of the right types.
    unsafe {
        assert_eq!(libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock), 0);
        assert_eq!(libc::clock_gettime(clock, &mut now), 0);
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A Graph stand-in on this process's runtime that answers every request
/// with `reply`.
pub async fn fixed_upstream(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            reply,
                        ))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
