use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use messenger_gateway::edge::grpc::pb::messenger_client::MessengerClient;
use messenger_gateway::edge::server::ServeOptions;

use crate::support::*;

#[tokio::test]
async fn shutdown_lets_sends_in_flight_finish_and_refuses_new_calls() {
    let graph = HeldGraph::start().await;
    let mut gw = TestGateway::builder().held_graph(&graph).start().await;
    let mut client = gw.client().await;
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move { client.send(text_to(USER, "sent before SIGTERM")).await })
    };
    graph.until_waiting(1).await;
    gw.begin_shutdown();

    // New calls are refused, on new connections and on the open one.
    let addr = gw.addr;
    eventually(
        Duration::from_secs(10),
        "the listener closed",
        || async move {
            MessengerClient::connect(format!("http://{addr}"))
                .await
                .is_err()
        },
    )
    .await;
    assert!(client.send(text_to(USER, "too late")).await.is_err());

    graph.release();
    let reply = in_flight
        .await
        .unwrap()
        .expect("the send in flight completes");
    assert_eq!(reply.into_inner().message_id, "mid.held.1");
    gw.served.take().unwrap().await.unwrap().unwrap();
    assert_eq!(
        graph.calls().len(),
        1,
        "only the send made before shutdown reached Graph"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_sends_that_outlast_the_grace_period() {
    let options = ServeOptions {
        shutdown_grace: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    // Graph never answers.
    let graph = HeldGraph::start().await;
    let mut gw = TestGateway::builder()
        .serve(options)
        .held_graph(&graph)
        .start()
        .await;
    let mut client = gw.client().await;
    tokio::spawn(async move { client.send(text_to(USER, "slow")).await });
    graph.until_waiting(1).await;
    let started = Instant::now();
    gw.begin_shutdown();
    gw.served.take().unwrap().await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn health_goes_not_serving_on_shutdown_and_watchers_are_released() {
    let mut gw = TestGateway::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", "messenger.v1.Messenger"] {
        let status = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);
    }
    let mut watch = health
        .watch(check("messenger.v1.Messenger"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within("the next item of watch", watch.message())
            .await
            .unwrap()
            .unwrap()
            .status,
        ServingStatus::Serving as i32
    );
    gw.begin_shutdown();
    let mut seen = Vec::new();
    while let Ok(Some(update)) = within("the next item of watch", watch.message()).await {
        seen.push(update.status);
    }
    assert_eq!(seen.last(), Some(&(ServingStatus::NotServing as i32)));
    tokio::time::timeout(Duration::from_secs(2), gw.served.take().unwrap())
        .await
        .expect("an open Watch does not hold the drain open")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_subscriptions_instead_of_waiting_out_the_grace() {
    let options = ServeOptions {
        shutdown_grace: Duration::from_secs(30),
        ..ServeOptions::default()
    };
    let mut gw = TestGateway::builder().serve(options).start().await;
    let mut events = gw.events_after(0).await;
    let started = Instant::now();
    gw.begin_shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("the stream ends at once");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(error_info(&status).0, "SHUTTING_DOWN");
    gw.served.take().unwrap().await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}
