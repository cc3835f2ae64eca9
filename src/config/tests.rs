use super::*;

fn builder() -> ConsumerConfigBuilder {
    ConsumerConfig::builder("127.0.0.1:9092", "g", ["t"]).instance_id("i-0")
}

#[test]
fn defaults_give_static_membership_and_manual_commits() {
    let c = builder().build().unwrap();
    let rd = c.group_consumer();
    assert_eq!(rd.get("group.instance.id"), Some("i-0"));
    assert_eq!(rd.get("enable.auto.commit"), Some("false"));
    assert_eq!(rd.get("enable.auto.offset.store"), Some("false"));
    assert_eq!(
        rd.get("partition.assignment.strategy"),
        Some("cooperative-sticky")
    );
    assert_eq!(rd.get("session.timeout.ms"), Some("45000"));
}

#[test]
fn flushes_follow_the_commit_interval_unless_set() {
    let second = Duration::from_secs(1);
    let c = builder().commit_interval(second).build().unwrap();
    assert_eq!(c.flush_interval, second, "a commit waits for the flush");
    let c = builder()
        .flush_interval(Duration::from_secs(10))
        .commit_interval(second)
        .build()
        .unwrap();
    assert_eq!(c.flush_interval, Duration::from_secs(10));
    assert_eq!(builder().build().unwrap().flush_interval, 5 * second);
}

#[test]
fn auto_commit_override_is_rejected() {
    let err = builder()
        .set("enable.auto.commit", "true")
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::ForbiddenOverride { ref key, .. } if key == "enable.auto.commit")
    );
    assert!(builder().set("enable.auto.commit", "false").build().is_ok());
    let err = builder()
        .set_all_clients("group.instance.id", "x")
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::ForbiddenOverride { .. }));
    assert!(builder().set("fetch.max.bytes", "1048576").build().is_ok());
}

#[test]
fn instance_id_from_env_is_required_unless_dynamic() {
    let var = "KAFKA_STATEFUL_TEST_UNSET_VAR";
    let err = builder()
        .membership(Membership::StaticFromEnv(var.into()))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::MissingInstanceIdEnv { .. }),
        "{err}"
    );
    let c = builder().dynamic_membership().build().unwrap();
    assert_eq!(c.instance_id(), None);
    assert_eq!(c.group_consumer().get("group.instance.id"), None);
    let c = builder()
        .membership(Membership::StaticFromEnv("PATH".into()))
        .build()
        .unwrap();
    assert!(c.instance_id().is_some());
}

#[test]
fn invalid_values_are_rejected() {
    assert!(ConsumerConfig::builder("", "g", ["t"])
        .instance_id("i")
        .build()
        .is_err());
    assert!(ConsumerConfig::builder("b", "g", Vec::<String>::new())
        .instance_id("i")
        .build()
        .is_err());
    assert!(builder().queue_capacity(0).build().is_err());
    assert!(builder().instance_id(" ").build().is_err());
    assert!(builder()
        .session_timeout(Duration::from_secs(60))
        .max_poll_interval(Duration::from_secs(30))
        .build()
        .is_err());
    assert!(builder()
        .error_policy(ErrorPolicy::DeadLetter("t".into()))
        .build()
        .is_err());
}

#[test]
fn a_revoke_must_fit_in_max_poll_interval() {
    // Default: 30 s + 30 s < 5 min.
    assert!(builder().build().is_ok());
    let err = builder()
        .session_timeout(Duration::from_secs(10))
        .max_poll_interval(Duration::from_secs(20))
        .revoke_timeout(Duration::from_secs(5))
        .flush_timeout(Duration::from_secs(15))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                name: "revoke_timeout + flush_timeout",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_poll_interval"), "{err}");
    assert!(builder()
        .session_timeout(Duration::from_secs(10))
        .max_poll_interval(Duration::from_secs(21))
        .revoke_timeout(Duration::from_secs(5))
        .flush_timeout(Duration::from_secs(15))
        .build()
        .is_ok());
}

#[test]
fn debug_redacts_secrets() {
    // Every librdkafka property that holds a secret (TLS, SASL, OAUTHBEARER).
    let secrets = [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "ssl_key",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
    ];
    let mut b = builder();
    for (i, key) in secrets.iter().enumerate() {
        b = match i % 2 {
            0 => b.set_all_clients(*key, format!("hunter{i}")),
            _ => b.set(*key, format!("hunter{i}")),
        };
    }
    let printed = format!("{:?}", b.build().unwrap());
    assert!(!printed.contains("hunter"), "{printed}");
    for key in secrets {
        assert!(printed.contains(key), "{key} is named: {printed}");
    }
}

#[test]
fn produced_records_are_compressed_as_set() {
    let lz4 = builder().build().unwrap().producer();
    assert_eq!(lz4.get("compression.type"), Some("lz4"));
    let zstd = builder()
        .compression(crate::config::Compression::Zstd)
        .build()
        .unwrap()
        .producer();
    assert_eq!(zstd.get("compression.type"), Some("zstd"));
}

#[test]
fn stores_need_a_state_dir_one_source_topic_and_legal_names() {
    use crate::codec::{Bincode, Utf8};
    let counts = crate::StoreDef::new("counts", Utf8, Bincode::<u64>::new());
    let stateful = |b: ConsumerConfigBuilder| b.state_dir("/tmp/ks").store(&counts);
    assert!(stateful(builder()).build().is_ok());
    assert!(matches!(
        builder().store(&counts).build(),
        Err(ConfigError::Empty(_))
    ));
    let two_topics = ConsumerConfig::builder("b:9092", "g", ["t1", "t2"]).instance_id("i");
    assert!(matches!(
        stateful(two_topics).build(),
        Err(ConfigError::Invalid { name: "topics", .. })
    ));
    let bad_group = ConsumerConfig::builder("b:9092", "my group", ["t"]).instance_id("i");
    assert!(matches!(
        stateful(bad_group).build(),
        Err(ConfigError::Invalid {
            name: "group id",
            ..
        })
    ));
    let bad_store = crate::StoreDef::new("a/b", Utf8, Bincode::<u64>::new());
    assert!(matches!(
        builder().state_dir("/tmp/ks").store(&bad_store).build(),
        Err(ConfigError::Invalid {
            name: "store name",
            ..
        })
    ));
    // Without stores, group ids are free-form: nothing derives topic names from them.
    let plain = ConsumerConfig::builder("b:9092", "my group", ["t1", "t2"]).instance_id("i");
    assert!(plain.build().is_ok());
}

#[test]
fn standby_replicas_need_stores_and_static_membership_and_default_to_range() {
    let counts = crate::StoreDef::new(
        "counts",
        crate::codec::Utf8,
        crate::codec::Bincode::<u64>::new(),
    );
    let with_store = || builder().state_dir("/tmp/ks").store(&counts);
    let standby = crate::StandbyReplicas::new(1);
    let c = with_store().standby_replicas(standby).build().unwrap();
    assert_eq!(
        c.assignment,
        AssignmentStrategy::Range,
        "heirs are predictable"
    );
    assert_eq!(c.group_consumer().get("client.id"), Some("i-0"));
    let c = with_store()
        .assignment(AssignmentStrategy::CooperativeSticky)
        .standby_replicas(standby)
        .build()
        .unwrap();
    assert_eq!(c.assignment, AssignmentStrategy::CooperativeSticky);
    for rejected in [
        builder().standby_replicas(standby),
        with_store().dynamic_membership().standby_replicas(standby),
        with_store().standby_replicas(crate::StandbyReplicas::new(0)),
    ] {
        assert!(matches!(
            rejected.build(),
            Err(ConfigError::Invalid {
                name: "standby_replicas",
                ..
            })
        ));
    }
}

#[test]
fn tables_take_most_of_the_cache_share_for_their_read_caches() {
    use crate::codec::Utf8;
    use crate::table::TableDef;
    let budget = 192 << 20;
    let share = budget / 4;
    let plain = builder()
        .memory_budget(budget)
        .build()
        .unwrap()
        .sized_for(4);
    assert_eq!(plain.rocks_cache_bytes(), share);

    let customers: TableDef<String, String> = TableDef::new("customers", "customers", Utf8, Utf8);
    let regions: TableDef<String, String> = TableDef::new("regions", "regions", Utf8, Utf8);
    let config = builder()
        .memory_budget(budget)
        .state_dir("/tmp/never-opened")
        .table(&customers)
        .global_table(&regions)
        .build()
        .unwrap()
        .sized_for(4);
    let caches = share / 6 * 5;
    assert_eq!(config.rocks_cache_bytes(), share - caches);
    // Four partitions' co-partitioned tables and one global table: five stores.
    assert_eq!(config.table_cache_bytes, caches / 5);
}
