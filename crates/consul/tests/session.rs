//! Sessions against a real agent: a key acquired with a session keeps its
//! value but loses its `Session` when the session ends, which is how a
//! node report is told stale; an ended session is reported as such, not
//! as an error, so its holder makes a new one.

use std::time::Duration;

use converge_consul::{Client, Config, QueryOptions};
use converge_testkit::consul::ConsulAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquired_key_is_released_when_its_session_ends() {
    let agent = ConsulAgent::start().expect("consul agent -dev");
    let c = Client::new(Config::new(&agent.http_url()).expect("config")).expect("client");
    let id = c
        .session_create("report lb1", Duration::from_secs(10))
        .await
        .expect("create");
    assert!(c.session_renew(&id).await.expect("renew"));
    assert!(c
        .kv_acquire("fleet/nodes/lb1", b"r1", &id)
        .await
        .expect("acquire"));
    let read = |c: Client| async move {
        c.kv_get("fleet/nodes/lb1", &QueryOptions::default())
            .await
            .expect("get")
            .value
            .expect("present")
    };
    assert_eq!(read(c.clone()).await.session.as_deref(), Some(id.as_str()));

    // Another session cannot take the key while the first holds it.
    let other = c
        .session_create("report lb1 (second)", Duration::from_secs(10))
        .await
        .expect("create");
    assert!(!c
        .kv_acquire("fleet/nodes/lb1", b"x", &other)
        .await
        .expect("refused"));

    assert!(c.session_destroy(&id).await.expect("destroy"));
    let pair = read(c.clone()).await;
    assert_eq!(pair.value, b"r1", "the report stays");
    assert_eq!(pair.session, None, "but nobody holds it: stale");
    assert!(!c.session_renew(&id).await.expect("renew answers"), "gone");
    assert!(
        !c.kv_acquire("fleet/nodes/lb1", b"r2", &id)
            .await
            .expect("answers"),
        "an ended session cannot write"
    );
}
